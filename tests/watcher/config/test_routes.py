"""The config's `routes`: resolution, compatibility, and every refusal naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config.routes import DEFAULT_ROUTE
from watcher.config.settings import ConfigError, load_config
from watcher.jobs.reading import parse_job

THREE_ROUTES = """\
max_concurrent_jobs: 8
results: ./results
archive: ./archive
defaults: {timeout: 5, sleep: 0}
flows:
  wait: flows.wait:wait
  csv_summary: examples.csv_summary:csv_summary
routes:
  invoices:
    inbox: ./hot/invoices
    results: ./out/invoices
    archive: ./done/invoices
    flow: csv_summary
    flows: [csv_summary]
    defaults: {timeout: 60, parameters: {delimiter: ";"}}
    recursive: true
    order: oldest
    priority: 10
    max_concurrent_jobs: 2
  reports:
    inbox: ./hot/reports
    order: name
  scans:
    inbox: ./hot/scans
    recursive: true
    max_depth: 2
    order: newest
"""


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_three_routes_resolve_with_their_own_folders_flows_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(THREE_ROUTES)
    settings = load_config(path)
    assert list(settings.served) == ["invoices", "reports", "scans"]
    invoices, reports, scans = settings.served.values()
    assert invoices.inbox == tmp_path / "hot/invoices"
    assert invoices.results == tmp_path / "out/invoices"
    assert invoices.archive == tmp_path / "done/invoices"
    assert invoices.processing == tmp_path / "processing/invoices"
    assert (invoices.flow, invoices.flows) == ("csv_summary", ("csv_summary",))
    assert (invoices.timeout, invoices.sleep) == (60, 0)  # sleep from the top-level defaults
    assert dict(invoices.parameters) == {"delimiter": ";"}
    assert (invoices.recursive, invoices.max_depth, invoices.priority) == (True, 8, 10)
    assert invoices.max_concurrent_jobs == 2
    # Unset keys: the parents' folders by route name, all flows, wait, top-level defaults.
    assert reports.results == tmp_path / "results/reports"
    assert reports.archive == tmp_path / "archive/reports"
    assert (reports.flow, reports.flows, reports.order) == (
        "wait",
        ("wait", "csv_summary"),
        "name",
    )
    assert (reports.timeout, reports.recursive, reports.max_concurrent_jobs) == (5, False, None)
    assert (scans.max_depth, scans.order) == (2, "newest")


def test_a_routes_settings_apply_its_flow_and_default_parameters_to_jobs(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(THREE_ROUTES)
    settings = load_config(path)
    invoices = settings.for_route("invoices")
    assert invoices.inbox == tmp_path / "hot/invoices"
    assert invoices.results == tmp_path / "out/invoices"
    job = parse_job(b"parameters: {path: a.csv}\n", invoices.job_limits)
    assert job.flow == "csv_summary" and job.timeout == 60
    assert job.parameters == {"delimiter": ";", "path": "a.csv"}
    # A job's own parameter wins over the route's default.
    job = parse_job(b"parameters: {path: a.csv, delimiter: ','}\n", invoices.job_limits)
    assert job.parameters == {"delimiter": ",", "path": "a.csv"}
    # A flow the route does not take is refused, naming the route's flows.
    with pytest.raises(Exception, match="no flow named 'wait' is registered here"):
        parse_job(b"flow: wait\nsleep: 0\n", invoices.job_limits)
    reports = settings.for_route("reports")
    job = parse_job(b"{}", reports.job_limits)
    assert job.flow == "wait" and job.timeout == 5 and job.parameters is None


def test_without_routes_the_top_level_folders_are_the_default_route(tmp_path: Path) -> None:
    settings = load_config(_write_plain(tmp_path))
    assert list(settings.served) == [DEFAULT_ROUTE]
    route = settings.route
    assert (route.inbox, route.results, route.archive, route.processing) == (
        tmp_path / "drop",
        tmp_path / "results",
        tmp_path / "archive",
        tmp_path / "processing",
    )
    same = settings.for_route(DEFAULT_ROUTE)
    assert same.inbox == settings.inbox and same.job_limits == settings.job_limits


def _write_plain(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("inbox: ./drop\ndefaults: {timeout: 3}\n")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "inbox: ./in\nroutes: {a: {inbox: ./x}}\n",
            "inbox: with routes, each route names its own inbox",
        ),
        (
            "routes: {a: {inbox: ./x}, b: {inbox: ./x/}}\n",
            "routes: a and b have the same inbox",
        ),
        (
            "routes: {a: {inbox: ./x, recursive: true}, b: {inbox: ./x/y}}\n",
            "routes: b's inbox (",
        ),
        (
            "routes: {a: {inbox: ./x, results: ./y/out}, b: {inbox: ./y}}\n",
            "routes: a's results (",
        ),
        (
            "routes: {a: {inbox: ./x}, b: {inbox: ./archive/a/in}}\n",
            "routes: b's inbox (",
        ),
        ("routes: {a: {inbx: ./x}}\n", "routes: a: unknown key 'inbx' (did you mean 'inbox'?)"),
        ("routes: {a: {results: ./x}}\n", "routes: a: inbox: required"),
        ("routes: {Big: {inbox: ./x}}\n", "routes: 'Big' is not a route name"),
        ("routes: {a: {inbox: ./x, flow: csv}}\n", "routes: a: no flow named 'csv'"),
        ("routes: {a: {inbox: ./x, flows: [wiat]}}\n", "(did you mean 'wait'?)"),
        (
            "routes: {a: {inbox: ./x, defaults: {parameters: {d: 1}}}}\n",
            "routes: a: defaults: parameters: the route's flow is wait",
        ),
        ("routes: {a: {inbox: ./x, order: random}}\n", "order"),
        ("routes: {a: {inbox: ./data}}\n", "data_dir ("),
        ("routes: {}\n", "routes: must be a mapping of route names to routes (at least one)"),
    ],
)
def test_a_bad_route_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in _refused(tmp_path, text)


def test_overlap_messages_name_both_routes_and_folders(tmp_path: Path) -> None:
    message = _refused(tmp_path, "routes: {a: {inbox: ./x, recursive: true}, b: {inbox: ./x/y}}\n")
    assert f"b's inbox ({tmp_path / 'x/y'}) is inside a's inbox ({tmp_path / 'x'})" in message
    assert "which is recursive" in message
    # The same nesting without `recursive` is two routes apart: a watches only its own folder.
    path = tmp_path / "config.yaml"
    path.write_text("routes: {a: {inbox: ./x}, b: {inbox: ./x/y}}\n")
    assert list(load_config(path).served) == ["a", "b"]


def test_routes_need_no_wait_flow_when_the_config_registers_none(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "flows: {csv_summary: examples.csv_summary:csv_summary}\n"
        "routes: {a: {inbox: ./x}, b: {inbox: ./y, flow: csv_summary}}\n"
    )
    served = load_config(path).served
    assert (served["a"].flow, served["a"].flows) == ("csv_summary", ("csv_summary",))
    assert served["b"].flow == "csv_summary"
    # With several flows and none named, the default is wait: not registered here, said so.
    path.write_text(
        "flows: {csv_summary: examples.csv_summary:csv_summary, nap: flows.work:nap}\n"
        "routes: {a: {inbox: ./x}}\n"
    )
    with pytest.raises(ConfigError, match=r"routes: a: flow: wait is not among the route's flows"):
        load_config(path)


def test_the_archive_layout_is_daily_unless_the_config_or_a_route_says_flat(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    assert load_config(config).route.archive_layout == "daily"
    config.write_text(
        "archive_layout: flat\n"
        "routes:\n"
        "  a: {inbox: ./a}\n"
        "  b: {inbox: ./b, archive_layout: daily}\n"
    )
    settings = load_config(config)
    layouts = {name: settings.for_route(name).archive_layout for name in settings.served}
    assert layouts == {"a": "flat", "b": "daily"}
    assert settings.for_route("a").route.archive_layout == "flat"
    refused = _refused(tmp_path, "routes: {a: {inbox: ./a, archive_layout: weekly}}\n")
    assert "routes.a.archive_layout: Input should be 'daily' or 'flat', got 'weekly'" in refused

"""The operator's commands on a config with routes: `submit --route`, `validate --route`,
`schema --route` and `status` per route, called in-process on folders made here (no service),
and `submit --route` against a real `dropflow run`.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import ROOT
from watcher.cli.app import main
from watcher.jobs.names import ID_TIME_FORMAT

ROUTES: dict[str, Any] = {
    "flows": {"wait": "flows.wait:wait", "read": f"{ROOT}/tests/userflows.py:read_text"},
    "files_dir": "./files",
    "routes": {
        "invoices": {
            "inbox": "./hot/invoices",
            "defaults": {"timeout": 7},
            "recursive": True,
            "max_depth": 2,
        },
        "reports": {
            "inbox": "./hot/reports",
            "flow": "read",
            "flows": ["read"],
            "defaults": {"timeout": 30, "parameters": {"path": "a.txt"}},
        },
    },
}

Run = tuple[int, str, str]


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config with two routes, its folders made, as the working directory."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(ROUTES))
    for folder in ("files", "hot/invoices", "hot/reports"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dropflow(capsys: pytest.CaptureFixture[str], command: str, *args: str) -> Run:
    code = main([command, "-c", "config.yaml", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str, age: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


LISTED = "invoices ({0}/hot/invoices), reports ({0}/hot/reports)"

# -- which route -----------------------------------------------------------------------------


def test_submit_without_route_to_two_routes_is_an_error_listing_them(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(two / "a.yaml", "sleep: 0\n")
    code, out, err = dropflow(capsys, "submit", "a.yaml")
    assert (code, out) == (2, "")
    assert err == (
        "dropflow: submit: this config has 2 routes: name one with --route NAME: "
        f"{LISTED.format(two)}\n"
    )
    assert files(two / "hot") == []


@pytest.mark.parametrize("command", ["submit", "validate", "schema"])
def test_an_unknown_route_gets_a_did_you_mean(
    two: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    write(two / "a.yaml", "sleep: 0\n")
    given = () if command == "schema" else ("a.yaml",)
    code, out, err = dropflow(capsys, command, "--route", "invoics", *given)
    assert (code, out) == (2, "")
    assert err == (
        f"dropflow: {command}: --route: no route named 'invoics' (did you mean 'invoices'?); "
        f"the config's routes: {LISTED.format(two)}\n"
    )
    assert files(two / "hot") == []


def test_submit_route_checks_with_its_rules_and_drops_into_its_inbox(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(two / "empty.yaml", "{}\n")  # reports' default flow and parameters make it a job
    code, out, err = dropflow(capsys, "submit", "--route", "reports", "empty.yaml")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"empty.yaml: submitted as {two / 'hot/reports/empty.yaml'}",
        f"dropflow: no service is serving {two / 'hot/reports'} (route reports) now: the job "
        "waits in the inbox until one starts",
    ]
    write(two / "wait.yaml", "flow: wait\nsleep: 0\n")  # reports take read jobs only
    code, out, err = dropflow(capsys, "submit", "-r", "reports", "wait.yaml")
    assert code == 2
    assert out.splitlines()[0].startswith("wait.yaml: flow: ")
    assert files(two / "hot") == ["reports/empty.yaml"]
    code, out, _ = dropflow(capsys, "submit", "--route", "invoices", "--wait", "empty.yaml")
    assert code == 4
    assert f"no service is serving {two / 'hot/invoices'} (route invoices); nothing" in out


def test_submit_refuses_a_file_already_in_a_routes_inbox(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(two / "hot/invoices/a/b/x.yaml", "{}\n")
    code, out, _ = dropflow(capsys, "submit", "--route", "reports", "hot/invoices/a/b/x.yaml")
    assert code == 2
    assert out.startswith(
        "hot/invoices/a/b/x.yaml: already in route invoices's inbox: the service takes it"
    )
    code, out, _ = dropflow(capsys, "submit", "--route", "invoices", "hot/invoices/a/b/x.yaml")
    assert code == 2
    assert out.startswith("hot/invoices/a/b/x.yaml: already in the inbox: the service takes it")
    assert files(two / "hot") == ["invoices/a/b/x.yaml"]


def test_validate_checks_a_file_as_its_inboxs_route_or_with_route(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(two / "hot/reports/r.yaml", "{}\n")
    write(two / "hot/invoices/a/b/z.yaml", "sleep: 0\n")
    write(two / "hot/invoices/a/b/c/deep.yaml", "sleep: 0\n")  # past max_depth: no job there
    write(two / "hot/invoices/x.yaml", "timout: 1\n")
    write(two / "loose.yaml", "sleep: 0\n")
    given = ["hot/reports/r.yaml", "hot/invoices/a/b/z.yaml", "hot/invoices/a/b/c/deep.yaml"]
    code, out, err = dropflow(capsys, "validate", *given, "hot/invoices/x.yaml", "loose.yaml")
    assert code == 2
    assert out.splitlines() == [
        "hot/reports/r.yaml: valid (route reports: flow read, timeout 30 s, parameters path)",
        "hot/invoices/a/b/z.yaml: valid (route invoices: timeout 7 s, sleep 0 s)",
        "hot/invoices/a/b/c/deep.yaml: valid (timeout 2 s, sleep 0 s)",
        "hot/invoices/x.yaml: unknown key 'timout' (did you mean 'timeout'?) (route invoices)",
        "loose.yaml: valid (timeout 2 s, sleep 0 s)",
    ]
    assert err == (
        "dropflow: validate: 2 of the files are in no route's inbox: checked with the top-level "
        "settings (every registered flow, the top-level defaults); --route NAME checks them as "
        "that route's jobs\n"
    )
    code, out, err = dropflow(capsys, "validate", "--route", "reports", "loose.yaml")
    assert (code, err) == (2, "")
    assert out.startswith("loose.yaml: sleep: only wait jobs have it")
    write(two / "empty.yaml", "{}\n")
    code, out, err = dropflow(capsys, "validate", "--route", "reports", "empty.yaml")
    assert (code, out, err) == (
        0,
        "empty.yaml: valid (flow read, timeout 30 s, parameters path)\n",
        "",
    )


# -- schema ----------------------------------------------------------------------------------


def test_schema_route_has_the_routes_default_flow_and_timeout(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = dropflow(capsys, "schema", "--route", "reports")
    assert (code, err) == (0, "")
    schema = json.loads(out)
    assert schema["properties"]["flow"]["default"] == "read"
    assert schema["properties"]["flow"]["enum"] == ["read"]
    [branch] = schema["allOf"]
    assert {"not": {"required": ["flow"]}} in branch["if"]["anyOf"]  # no flow named: read
    then = branch["then"]
    assert then["properties"]["timeout"]["default"] == 30
    assert then["properties"]["parameters"]["properties"]["path"]["default"] == "a.txt"
    assert then["required"] == []  # path has its default

    code, out, err = dropflow(capsys, "schema", "--route", "invoices")
    assert (code, err) == (0, "")
    schema = json.loads(out)
    assert schema["properties"]["flow"]["default"] == "wait"
    assert schema["allOf"][0]["then"]["properties"]["timeout"]["default"] == 7


def test_schema_without_route_is_the_one_every_route_shares_or_an_error(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = dropflow(capsys, "schema")
    assert (code, out) == (2, "")
    assert err == (
        "dropflow: schema: this config's routes take different job files (flows or defaults): "
        f"name one with --route NAME: {LISTED.format(two)}\n"
    )
    alike = {"routes": {"a": {"inbox": "./a"}, "b": {"inbox": "./b"}}, "defaults": {"timeout": 9}}
    (two / "config.yaml").write_text(yaml.safe_dump(alike))
    code, out, err = dropflow(capsys, "schema")
    assert (code, err) == (0, "")
    assert json.loads(out)["properties"]["timeout"]["default"] == 9


# -- status ----------------------------------------------------------------------------------


def _claim(processing: Path, name: str, subfolder: str = "") -> None:
    at = datetime.now(UTC).strftime(ID_TIME_FORMAT)
    folder = processing / f"{at}-{os.urandom(3).hex()}.1"
    write(folder / name, "sleep: 0\n")
    if subfolder:
        write(folder / ".subfolder", subfolder)


def _result(path: Path, route: str, status: str, age: float = 0) -> None:
    job = path.name.split(".result")[0] + ".yaml"
    text = yaml.safe_dump({"job": job, "status": status, "route": route, "message": status})
    write(path, text, age)


def test_status_reports_each_route_and_the_totals(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hot = two / "hot"
    write(hot / "invoices/x.yaml", "{}\n", age=60)
    write(hot / "invoices/a/y.yaml", "{}\n", age=30)
    write(hot / "invoices/a/b/z.yaml", "{}\n")
    write(hot / "invoices/a/b/c/deep.yaml", "{}\n")  # past max_depth: not a job
    write(hot / "invoices/.drafts/d.yaml", "{}\n")  # a dotfolder: skipped
    write(hot / "invoices/a/notes.txt", "x\n")
    write(hot / "reports/r.yaml", "{}\n", age=90)
    _claim(two / "processing/invoices", "p.yaml", "a")
    _claim(two / "processing/reports", "q.yaml")
    _claim(two / "processing/reports", "s.yaml")
    results = two / "results"
    _result(results / "invoices/x0.result.yaml", "invoices", "completed")
    _result(results / "invoices/a/y0.result.yaml", "invoices", "error")
    _result(results / "invoices/a/b/c/too-deep.result.yaml", "invoices", "error")
    _result(results / "invoices/old.result.yaml", "invoices", "completed", age=7200)
    _result(results / "reports/r0.result.yaml", "reports", "canceled")
    _result(results / "reports/sub/r1.result.yaml", "reports", "completed")  # not recursive

    code, out, err = dropflow(capsys, "status", "--json")
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert status["service"] is None
    assert status["routes"] == {
        "invoices": {
            "inbox": str(hot / "invoices"),
            "waiting": 3,
            "in_flight": 1,
            "results": {"completed": 1, "canceled": 0, "error": 1},
        },
        "reports": {
            "inbox": str(hot / "reports"),
            "waiting": 1,
            "in_flight": 2,
            "results": {"completed": 0, "canceled": 1, "error": 0},
        },
    }
    inbox = status["inbox"]
    assert inbox["folder"] is None and inbox["backlog"] == 4 and inbox["oldest_age_s"] >= 90
    assert inbox["files"] == [
        "reports/r.yaml",
        "invoices/x.yaml",
        "invoices/a/y.yaml",
        "invoices/a/b/z.yaml",
    ]
    flying = sorted((c["route"], c.get("subfolder", ""), c["job"]) for c in status["in_flight"])
    assert flying == [
        ("invoices", "a", "p.yaml"),
        ("reports", "", "q.yaml"),
        ("reports", "", "s.yaml"),
    ]
    assert status["results"]["folder"] is None
    assert status["results"]["last_hour"] == {"completed": 1, "canceled": 1, "error": 1}
    assert status["results"]["last_day"] == {"completed": 2, "canceled": 1, "error": 1}
    newest = {(r["route"], r["file"]) for r in status["results"]["newest"]}
    assert newest == {
        ("invoices", "invoices/x0.result.yaml"),
        ("invoices", "invoices/a/y0.result.yaml"),
        ("invoices", "invoices/old.result.yaml"),
        ("reports", "reports/r0.result.yaml"),
    }

    code, out, err = dropflow(capsys, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "service:    none is serving routes invoices, reports",
        "routes:     2",
        "  invoices  3 waiting, 1 in flight, last hour 1 completed, 0 canceled, 1 error  "
        f"(inbox {hot / 'invoices'})",
        "  reports   1 waiting, 2 in flight, last hour 0 completed, 1 canceled, 0 error  "
        f"(inbox {hot / 'reports'})",
    ]
    assert lines[4].startswith("inbox:      4 waiting in 2 routes, oldest ")
    assert "              invoices/a/p.yaml  attempt 1  age " in out
    assert "results:    2 routes\n  last hour:  1 completed, 1 canceled, 1 error\n" in out


def test_status_of_one_route_keeps_todays_shape_and_adds_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"routes": {"only": {"inbox": "in"}}}))
    write(tmp_path / "in/a.yaml", "{}\n")
    _result(tmp_path / "results/only/a.result.yaml", "only", "completed")
    code, out, _ = dropflow(capsys, "status", "--json")
    status = json.loads(out)
    assert code == 0 and set(status) == {"service", "inbox", "in_flight", "results", "routes"}
    assert status["inbox"]["folder"] == str(tmp_path / "in")
    assert status["inbox"]["files"] == ["a.yaml"]
    assert status["results"]["folder"] == str(tmp_path / "results/only")
    assert status["results"]["newest"][0]["file"] == "a.result.yaml"
    assert status["routes"]["only"]["waiting"] == 1
    code, out, _ = dropflow(capsys, "status")
    assert "routes:" not in out
    assert f"inbox:      1 waiting in {tmp_path / 'in'}" in out


def test_status_counts_a_shared_results_folder_by_the_route_each_result_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    shared = {"inbox": "a", "results": "out"}
    config = {"routes": {"a": shared, "b": {**shared, "inbox": "b", "recursive": True}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    _result(tmp_path / "out/x.result.yaml", "a", "completed")
    _result(tmp_path / "out/y.result.yaml", "b", "error")
    _result(tmp_path / "out/sub/z.result.yaml", "b", "error")  # b is recursive, a is not
    code, out, _ = dropflow(capsys, "status", "--json")
    status = json.loads(out)
    assert code == 0
    assert status["routes"]["a"]["results"] == {"completed": 1, "canceled": 0, "error": 0}
    assert status["routes"]["b"]["results"] == {"completed": 0, "canceled": 0, "error": 2}
    assert status["results"]["last_hour"] == {"completed": 1, "canceled": 0, "error": 2}
    files = sorted(r["file"] for r in status["results"]["newest"])
    assert files == ["a/x.result.yaml", "b/sub/z.result.yaml", "b/y.result.yaml"]


# -- against a running service ----------------------------------------------------------------


def test_submit_route_default_waits_on_the_served_inbox(
    service: ServiceFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service({"defaults": {"timeout": 5, "sleep": 0}})
    monkeypatch.chdir(svc.root)
    write(svc.root / "jobs/one.yaml", "sleep: 0\n")
    code, out, err = dropflow(
        capsys, "submit", "--route", "default", "--wait", "--json", "jobs/one.yaml"
    )
    assert (code, err) == (0, "")
    [result] = json.loads(out)
    assert result["result"]["status"] == "completed" and result["result"]["route"] == "default"
    assert Path(result["result_path"]).parent == svc.results
    code, out, err = dropflow(capsys, "submit", "--route", "defualt", "jobs/one.yaml")
    assert (code, out) == (2, "")
    assert "no route named 'defualt' (did you mean 'default'?)" in err


def test_submit_route_and_status_against_a_service_of_two_routes(
    service: ServiceFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "defaults": {"timeout": 5, "sleep": 0},
        "routes": {
            "fast": {"inbox": "./hot/fast"},
            "slow": {"inbox": "./hot/slow", "defaults": {"timeout": 9}},
        },
    }
    svc = service(config)
    assert svc.proc is not None
    monkeypatch.chdir(svc.root)
    write(svc.root / "jobs/one.yaml", "sleep: 0\n")
    code, out, err = dropflow(capsys, "submit", "--wait", "jobs/one.yaml")
    assert (code, out) == (2, "") and "this config has 2 routes" in err
    code, out, err = dropflow(capsys, "submit", "-r", "slow", "--wait", "--json", "jobs/one.yaml")
    assert (code, err) == (0, "")
    [submitted] = json.loads(out)
    result = submitted["result"]
    assert (result["status"], result["route"], result["timeout"]) == ("completed", "slow", 9)
    assert Path(submitted["result_path"]).parent == svc.root / "results/slow"

    code, out, err = dropflow(capsys, "status", "--json")
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert status["service"]["pid"] == svc.proc.pid
    assert status["routes"]["slow"]["results"]["completed"] == 1
    assert status["routes"]["fast"]["results"]["completed"] == 0
    assert status["results"]["newest"][0]["file"] == "slow/one.result.yaml"

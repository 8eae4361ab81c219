from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import ROOT
from watcher import defaults
from watcher.config.settings import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_every_key_has_a_default(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, ""))
    assert settings.inbox == tmp_path / "inbox"
    assert settings.results == tmp_path / "results"
    assert settings.archive == tmp_path / "archive"
    assert settings.processing == tmp_path / "processing"
    assert settings.max_concurrent_jobs == defaults.MAX_CONCURRENT_JOBS == 8
    assert settings.defaults.timeout == 2 and settings.defaults.sleep == (0, 3)
    assert settings.patterns == ("*.yaml", "*.yml")
    assert settings.polling is False
    assert settings.shutdown_grace == 10 and settings.max_attempts == 3


def test_the_shipped_config_is_valid_and_matches_the_defaults() -> None:
    shipped = ROOT / "config.yaml"
    settings = load_config(shipped)
    assert settings.inbox == shipped.parent / "inbox"
    assert settings.max_concurrent_jobs == 8


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", "inbox: ../drop\nresults: /srv/out\n")
    settings = load_config(path)
    assert settings.inbox == tmp_path / "etc" / ".." / "drop"
    assert settings.results == Path("/srv/out")


def test_no_config_file_means_defaults_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).inbox == tmp_path / "inbox"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "max_concurent_jobs: 3\n",
            "unknown key 'max_concurent_jobs' (did you mean 'max_concurrent_jobs'?)",
        ),
        ("max_concurrent_jobs: many\n", "max_concurrent_jobs: Input should be a valid integer"),
        (
            "max_concurrent_jobs: 0\n",
            "max_concurrent_jobs: Input should be greater than or equal to 1",
        ),
        ("defaults: {timeout: -1}\n", "defaults.timeout: Input should be greater than 0"),
        ("defaults: {sleep: [3, 1]}\n", "defaults: sleep: the range [3, 1] is reversed"),
        ("defaults: {sleep: 9999}\nmax_sleep: 10\n", "defaults: sleep: must be at most 10 seconds"),
        ("inbox: results\nresults: results\n", "results: must differ from inbox"),
        ("inbox: 5\n", "inbox: must be a folder path, got 5"),
        ("polling: maybe\n", "polling: Input should be a valid boolean"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("inbox: [unclosed\n", "not valid YAML"),
        ("runner: threads\n", "runner: Input should be 'prefect', 'deployment' or 'direct'"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, ""))
    with pytest.raises(ValueError, match="frozen"):
        settings.max_concurrent_jobs = 3  # type: ignore[misc]


def test_the_embedded_server_keys(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, ""))
    assert settings.data_dir == tmp_path / "data"
    assert settings.server_port == defaults.SERVER_PORT == 4200
    assert settings.ui is True
    assert settings.history_days == defaults.HISTORY_DAYS == 30
    assert settings.events is defaults.EVENTS is True
    assert load_config(_write(tmp_path, "events: false\n")).events is False
    settings = load_config(
        _write(tmp_path, "data_dir: ../history\nserver_port: 4321\nui: false\nhistory_days: 0\n")
    )
    assert settings.data_dir == tmp_path / ".." / "history"
    assert (settings.server_port, settings.ui, settings.history_days) == (4321, False, 0)


def test_the_metrics_keys(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, ""))
    assert settings.metrics_port is defaults.METRICS_PORT is None  # off
    assert settings.metrics_host == defaults.METRICS_HOST == "127.0.0.1"
    settings = load_config(_write(tmp_path, "metrics_port: 9420\nmetrics_host: '::'\n"))
    assert (settings.metrics_port, settings.metrics_host) == (9420, "::")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics_port: 0\n", "metrics_port: Input should be greater than or equal to 1"),
        ("metrics_port: 65536\n", "metrics_port: Input should be less than or equal to 65535"),
        ("metrics_port: '9420'\n", "metrics_port: Input should be a valid integer"),
        ("metrics_port: true\n", "metrics_port: Input should be a valid integer, got true"),
        ("metrics_host: ''\n", "metrics_host: String should have at least 1 character"),
        ("metrics_host: 'a b'\n", "metrics_host: Value error, must be an address or host name"),
        ("metrics_host: 80\n", "metrics_host: Input should be a valid string"),
        (
            "results_days: 0.04\n",
            "results_days: Value error, must be 0 (keep for ever) or at least",
        ),
        ("archive_days: -1\n", "archive_days: Input should be greater than or equal to 0"),
        ("archive_days: true\n", "archive_days: Input should be a valid number, got true"),
        ("results_days: .inf\n", "results_days: Input should be a finite number"),
    ],
)
def test_bad_metrics_and_retention_keys_are_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, text))
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server_port: 70000\n", "server_port: Input should be less than or equal to 65535"),
        ("server_port: web\n", "server_port: Input should be a valid integer"),
        ("history_days: 0.01\n", "history_days: Value error, must be 0 (keep for ever) or at"),
        ("data_dir: inbox\n", "data_dir: must differ from inbox"),
        ("data_dir: ''\n", "data_dir: must be a folder path"),
        ("ui: maybe\n", "ui: Input should be a valid boolean"),
    ],
)
def test_bad_embedded_server_keys_are_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, text))
    assert expected in str(raised.value)


def test_flows_and_their_entrypoints(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, "flows:\n  csv: lib/csv_flow.py:summary\n  m: a.b:c\n"))
    assert settings.flows == {"csv": f"{tmp_path / 'lib' / 'csv_flow.py'}:summary", "m": "a.b:c"}
    assert settings.job_limits.flows == ("csv", "m")
    assert load_config(_write(tmp_path, "")).flows == {"wait": "flows.wait:wait"}
    assert load_config(_write(tmp_path, "files_dir: data/in\n")).files_dir == tmp_path / "data/in"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flows: {wait: mine.mod:f}\n", "flows: wait: the name 'wait' is the built-in wait flow"),
        ("flows: {'9x': a.b:c}\n", "flows: '9x' is not a flow name"),
        ("flows: {x: 'a.b'}\n", "flows: x: must be an entrypoint 'module.path:function'"),
        ("flows: {x: 'a.b:c:d'}\n", "flows: x: must be an entrypoint"),
        ("flows: [a]\n", "flows: must be a mapping of flow names to entrypoints"),
        ("flows: {}\n", "flows"),
        ("max_return_bytes: -1\n", "max_return_bytes"),
    ],
)
def test_bad_flows(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "max_concurrent_jobs: true\n",
            "max_concurrent_jobs: Input should be a valid integer, got true",
        ),
        ("max_attempts: false\n", "max_attempts: Input should be a valid integer, got false"),
        ("server_port: true\n", "server_port: Input should be a valid integer, got true"),
        ("max_job_bytes: true\n", "max_job_bytes: Input should be a valid integer, got true"),
        ("shutdown_grace: true\n", "shutdown_grace: Input should be a valid number, got true"),
        ("settle_seconds: false\n", "settle_seconds: Input should be a valid number, got false"),
        ("start_timeout: true\n", "start_timeout: Input should be a valid number, got true"),
        ("history_days: true\n", "history_days: Input should be a valid number, got true"),
        (
            "defaults: {timeout: true}\n",
            "defaults.timeout: Input should be a valid number, got true",
        ),
        ("defaults: {sleep: [true, 3]}\n", "defaults.sleep.tuple[float, float].0: Input should be"),
        ("defaults: {sleep: true}\n", "defaults.sleep.float: Input should be a valid number"),
        (
            "max_concurrent_jobs: '8'\n",
            "max_concurrent_jobs: Input should be a valid integer, got '8'",
        ),
        ("polling: 1\n", "polling: Input should be a valid boolean, got 1"),
        ("ui: 0\n", "ui: Input should be a valid boolean, got 0"),
        ("ui: 'yes'\n", "ui: Input should be a valid boolean, got 'yes'"),
        ("events: 1\n", "events: Input should be a valid boolean, got 1"),
    ],
)
def test_a_boolean_is_not_a_number_nor_a_number_a_boolean(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and expected in message


def test_numbers_and_booleans_as_yaml_writes_them(tmp_path: Path) -> None:
    settings = load_config(
        _write(tmp_path, "shutdown_grace: 5\nstart_timeout: 30\npolling: yes\nui: off\n")
    )
    assert (settings.shutdown_grace, settings.start_timeout) == (5.0, 30.0)
    assert (settings.polling, settings.ui) == (True, False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "max_attempts: 3\ninbox: in\nmax_attempts: 5\n",
            "the key 'max_attempts' appears twice (line 3)",
        ),
        (
            "defaults:\n  timeout: 2\n  sleep: 0\n  timeout: 3\n",
            "the key 'timeout' appears twice (line 4)",
        ),
        ("flows:\n  a: m.a:f\n  a: m.b:f\n", "the key 'a' appears twice (line 3)"),
        ("defaults: {sleep: 1, sleep: 2}\n", "the key 'sleep' appears twice (line 1)"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_it_and_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: {expected}"


def test_a_value_yaml_cannot_build_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "history_days: 2001-13-45\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: a value that cannot be read: month must be in 1..12"


def test_a_route_names_its_own_deployment_and_work_queue(tmp_path: Path) -> None:
    settings = load_config(
        _write(
            tmp_path,
            "runner: deployment\nroutes:\n"
            "  fast: {inbox: in/fast, deployment: wait/fast, work_queue: urgent}\n"
            "  slow: {inbox: in/slow}\n",
        )
    )
    fast, slow = settings.served["fast"], settings.served["slow"]
    assert (fast.deployment, fast.work_queue) == ("wait/fast", "urgent")
    assert (slow.deployment, slow.work_queue) == (None, None)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            "deployment: csv/fast",
            "routes: fast: deployment: must be 'wait/<deployment name>' (a deployment of the "
            "wait flow), got 'csv/fast'",
        ),
        ("deployment: wait/a/b", "routes: fast: deployment: must be 'wait/<deployment name>'"),
        ("deployment: 'wait/ '", "routes: fast: deployment: must be 'wait/<deployment name>'"),
        (
            "work_queue: a/b",
            "routes: fast: work_queue: must be a work queue name, without '/', '%', '&', '>' "
            "or '<', got 'a/b'",
        ),
        ("work_queue: '  '", "routes: fast: work_queue: must be a work queue name"),
        ("work_queue: 3", "routes.fast.work_queue: Input should be a valid string, got 3"),
    ],
)
def test_a_route_s_deployment_and_work_queue_are_checked_naming_the_route(
    tmp_path: Path, route: str, message: str
) -> None:
    path = _write(tmp_path, f"routes:\n  fast:\n    inbox: in/fast\n    {route}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {message}" in str(caught.value)


def test_the_retention_keys_keep_for_ever_by_default(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, ""))
    assert settings.results_days == defaults.RESULTS_DAYS == 0
    assert settings.archive_days == defaults.ARCHIVE_DAYS == 0
    settings = load_config(_write(tmp_path, "results_days: 7\narchive_days: 0.0417\n"))
    assert (settings.results_days, settings.archive_days) == (7, 0.0417)


def test_the_retention_floor_is_lowered_only_by_its_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The soak's retention of minutes: `results_days: 0.0035` (5 min) under a 60 s floor.
    config = _write(tmp_path, "results_days: 0.0035\n")
    with pytest.raises(ConfigError, match=r"at least 1/24 \(one hour\)"):
        load_config(config)
    monkeypatch.setenv(defaults.RETENTION_FLOOR_ENV, "60")
    assert load_config(config).results_days == 0.0035
    with pytest.raises(
        ConfigError, match=rf"at least 60 seconds .* {defaults.RETENTION_FLOOR_ENV}"
    ):
        load_config(_write(tmp_path, "archive_days: 0.0001\n"))
    monkeypatch.setenv(defaults.RETENTION_FLOOR_ENV, "soon")
    with pytest.raises(ConfigError, match=r"must be a number of seconds > 0, got 'soon'"):
        load_config(config)
    assert load_config(_write(tmp_path, "")).results_days == 0  # only a value given is checked

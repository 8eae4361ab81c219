"""The embedded default heals what it starts: a killed Prefect server, a killed PostgreSQL, a
deleted `data_dir`, a full one; and one service per `data_dir`. Real processes, real kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ServiceFactory
from tests.harness import ServiceProcess, free_port, post_json, wait_until
from tests.test_events import wait_events
from tests.watcher.service.test_health import get, wait_status
from watcher.server.postgres import PGDATA


def _server(svc: ServiceProcess) -> psutil.Process:
    """The service's embedded Prefect server process."""
    assert svc.proc is not None
    for child in psutil.Process(svc.proc.pid).children():
        if "watcher.server.embedded" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no embedded server process")


def _postmaster(data_dir: Path) -> psutil.Process:
    return psutil.Process(int((data_dir / PGDATA / "postmaster.pid").read_text().split()[0]))


def _ours(data_dir: Path) -> list[psutil.Process]:
    """Every process still running for this data folder: servers and PostgreSQL."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and ("postgres" in cmdline or "embedded" in cmdline):
            found.append(proc)
    return found


def _active_runs(svc: ServiceProcess) -> list[dict[str, Any]]:
    """Flow runs the embedded server still has as running, pending or scheduled."""
    port = svc.config["server_port"]
    body = {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "SCHEDULED"]}}}}
    runs: list[dict[str, Any]] = post_json(f"http://127.0.0.1:{port}/api/flow_runs/filter", body)
    return runs


def _status(svc: ServiceProcess) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "watcher", "status", "--json", "--config", "config.yaml"],
        cwd=svc.root,
        capture_output=True,
        text=True,
        check=True,
    )
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def _drop_running(svc: ServiceProcess, names: list[str], job: str) -> None:
    """Drop jobs and wait until every one has its flow run started."""
    for name in names:
        svc.drop(name, job)
    wait_until(lambda: svc.log().count("job started: ") >= len(names), 90)


@pytest.mark.embedded
def test_a_killed_server_or_postgres_is_restarted_and_no_job_pays_for_it(
    embedded_service: ServiceFactory,
) -> None:
    metrics = free_port()
    svc = embedded_service({"metrics_port": metrics})
    data_dir = Path(svc.config["data_dir"])
    svc.wait_for_log("runner: ", 90)
    wait_status(metrics, "/readyz", 200, 10)  # marked up just after that line

    # kill -9 the Prefect server while 3 jobs run, as the OOM killer would.
    job = "timeout: 60\nsleep: 4\n"
    _drop_running(svc, ["a.yaml", "b.yaml", "c.yaml"], job)
    _server(svc).kill()
    # Not ready while the server is down, and says why; ready again once it serves.
    down = wait_status(metrics, "/readyz", 503, 30)
    assert down["problems"] == [
        "runner down: the embedded Prefect server exited (killed by SIGKILL)"
    ], down
    svc.wait_for_log("the embedded Prefect server exited (killed by SIGKILL); restarting", 30)
    svc.wait_for_log("the embedded Prefect server serves again", 60)
    wait_status(metrics, "/readyz", 200, 10)
    assert get(metrics, "/healthz")[0] == 200  # the service itself stayed alive throughout
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        assert svc.wait_result(name, timeout=120)["status"] == "completed"
    svc.drop("after-server.yaml", "timeout: 30\nsleep: 0\n")
    assert svc.wait_result("after-server.yaml", timeout=60)["status"] == "completed"
    # Every job's events reached the server: those the killed one took but had not stored yet
    # were sent again (tests/test_events.py checks the events themselves).
    names = ("a.yaml", "b.yaml", "c.yaml", "after-server.yaml")
    wait_events(
        f"http://127.0.0.1:{svc.config['server_port']}/api",
        {name: svc.wait_result(name) for name in names},
        3 * len(names),
    )

    # kill -9 PostgreSQL while 2 jobs run: the server is restarted with it.
    _drop_running(svc, ["d.yaml", "e.yaml"], job)
    _postmaster(data_dir).kill()
    svc.wait_for_log("is not running; restarting it", 30)
    for name in ("d.yaml", "e.yaml"):
        assert svc.wait_result(name, timeout=120)["status"] == "completed"
    svc.drop("after-postgres.yaml", "timeout: 30\nsleep: 0\n")
    assert svc.wait_result("after-postgres.yaml", timeout=60)["status"] == "completed"

    # No run is left running in Prefect, and every job ran in attempt 1.
    wait_until(lambda: not _active_runs(svc), 30, interval=0.5)
    for path in svc.results.iterdir():
        assert "attempt: 1\n" in path.read_text(), path.read_text()
    assert svc.log().count("; restarting it, jobs wait") == 2
    # One WARNING per fault: the server's failed requests are in its own log, not in ours.
    assert "Traceback" not in svc.log()
    assert (data_dir / "server.log").stat().st_size > 0

    # A stop leaves nothing behind: no server, no PostgreSQL.
    assert svc.stop() == 0
    assert wait_until(lambda: not _ours(data_dir), 30)


@pytest.mark.embedded
def test_a_deleted_data_dir_is_made_again_and_said_once(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service()
    data_dir = Path(svc.config["data_dir"])
    svc.wait_for_log("runner: ", 90)
    _drop_running(svc, ["long.yaml"], "timeout: 60\nsleep: 5\n")
    shutil.rmtree(data_dir)
    svc.wait_for_log("the Prefect history it held is gone", 60)
    # The job is run again on the new history: not an error.
    assert svc.wait_result("long.yaml", timeout=120)["status"] == "completed"
    assert (data_dir / PGDATA / "PG_VERSION").exists()
    assert svc.log().count("the Prefect history it held is gone") == 1
    # The new folder is this service's, as the old one was.
    import fcntl

    probe = os.open(data_dir, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    assert svc.stop() == 0


@pytest.mark.embedded
def test_a_second_service_on_the_same_data_dir_is_refused(
    embedded_service: ServiceFactory, tmp_path: Path
) -> None:
    first = embedded_service()
    first.wait_for_log("runner: ", 90)
    other = tmp_path / "other"
    other.mkdir()
    second = ServiceProcess(
        other,
        {"server_port": free_port(), "data_dir": first.config["data_dir"]},
        api_url=None,
        prefect_home=other / "prefect-home",
    ).start(wait=False)
    assert second.proc is not None
    try:
        assert second.proc.wait(timeout=60) == 2
    finally:
        second.kill()
    log = second.log()
    assert f"data_dir {first.config['data_dir']} is used by another dropflow" in log
    assert first.proc is not None and f"pid {first.proc.pid}" in log
    # The first one goes on serving.
    first.drop("still.yaml", "timeout: 30\nsleep: 0\n")
    assert first.wait_result("still.yaml", timeout=60)["status"] == "completed"
    assert first.stop() == 0


@pytest.mark.embedded
def test_a_full_data_dir_is_said_once_jobs_wait_and_status_says_down(
    embedded_service: ServiceFactory, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)], check=True)
    try:
        os.chmod(mount, 0o755)
        svc = embedded_service({"data_dir": str(mount / "data")})
        svc.wait_for_log("runner: ", 90)
        filler = mount / "filler"
        # Fill the file system to the last block, as a runaway log would.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        svc.drop("waits.yaml", "timeout: 10\nsleep: 0\n")
        svc.wait_for_log("is full: PostgreSQL cannot write; jobs wait", 60)
        wait_until(lambda: (_status(svc)["service"] or {}).get("runner_down"), 30)
        assert not svc.result_path("waits.yaml").exists()
        filler.unlink()
        assert svc.wait_result("waits.yaml", timeout=120)["status"] == "completed"
        assert svc.log().count("is full: PostgreSQL cannot write") == 1
        wait_until(lambda: not (_status(svc)["service"] or {}).get("runner_down"), 30)
        assert svc.stop(signal.SIGTERM) == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.embedded
def test_runs_left_running_by_a_kill_9_are_marked_crashed_at_the_next_start(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service()
    data_dir = Path(svc.config["data_dir"])
    svc.wait_for_log("runner: ", 90)
    _drop_running(svc, ["cut.yaml"], "timeout: 60\nsleep: 8\n")
    wait_until(lambda: _active_runs(svc), 30, interval=0.2)
    [left] = _active_runs(svc)
    # A power cut: the service, its server and PostgreSQL all killed at once.
    assert svc.proc is not None
    victims = [_postmaster(data_dir), *psutil.Process(svc.proc.pid).children(recursive=True)]
    for proc in victims:
        proc.kill()
    svc.kill()
    psutil.wait_procs(victims, timeout=10)

    svc = embedded_service()
    svc.wait_for_log("marked Crashed 1 flow run(s) left running by an earlier stop", 90)
    port = svc.config["server_port"]
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/api/flow_runs/{left['id']}", timeout=10
    ) as response:
        assert json.loads(response.read())["state"]["type"] == "CRASHED"
    # Its job, still claimed, runs again: a second attempt.
    result = svc.wait_result("cut.yaml", timeout=90)
    assert result["status"] == "completed" and result["attempt"] == 2
    assert not _active_runs(svc)
    assert svc.stop() == 0

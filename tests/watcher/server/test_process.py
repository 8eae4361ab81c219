"""End to end on the embedded default: every way of stopping the service drains its jobs, then
stops Prefect's services, then PostgreSQL, with no traceback and nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import QUIET_PREFECT, Child, ServiceProcess, claim_folders, wait_until
from watcher.server.embedded import SERVER_LOG
from watcher.server.postgres import PGDATA


class _Terminal:
    """A pseudo-terminal the service runs in: what it prints there, and its keyboard."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        received = b""
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process that had the terminal open has closed it
                break
            if not data:
                break
            received += data
            self.lines = received.decode(errors="replace").replace("\r\n", "\n").split("\n")
        os.close(self.master)

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)

    def press_ctrl_c(self) -> None:
        os.write(self.master, b"\x03")


def _start_in_a_terminal(svc: ServiceProcess) -> None:
    """Start the service as a shell would in a terminal: the terminal's foreground process
    group is the service's, so Ctrl-C there is SIGINT to that group."""
    config = svc.root / "config.yaml"
    config.write_text(yaml.safe_dump(svc.config))
    # DO_NOT_TRACK: in a terminal, Prefect's client turns its own telemetry on (no internet here).
    env = {
        **os.environ,
        **QUIET_PREFECT,
        "PREFECT_HOME": str(svc.prefect_home),
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    master, slave = os.openpty()
    # In a session of its own, take the terminal as the controlling one, then become dropflow.
    take = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    take += "os.execv(sys.argv[1], sys.argv[1:])"
    command = [sys.executable, "-m", "watcher", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-c", take, *command],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=svc.root,
        start_new_session=True,
    )
    os.close(slave)
    terminal = _Terminal(master)
    svc.proc, svc.output = proc, terminal  # type: ignore[assignment]
    svc._child = Child(proc, terminal)  # type: ignore[arg-type]  # the fixture kills it
    svc.wait_for_log("watching ", 120)


def _ctrl_c(svc: ServiceProcess) -> None:
    assert isinstance(svc.output, _Terminal)
    svc.output.press_ctrl_c()


def _group(signum: int) -> Callable[[ServiceProcess], None]:
    def send(svc: ServiceProcess) -> None:
        assert svc.proc is not None
        os.killpg(svc.proc.pid, signum)

    return send


def _service_only(svc: ServiceProcess) -> None:
    svc.send(signal.SIGTERM)


def _every_descendant(svc: ServiceProcess) -> None:
    # systemd's default (KillMode=control-group) signals every process of the unit at once.
    assert svc.proc is not None
    service = psutil.Process(svc.proc.pid)
    for proc in [service, *service.children(recursive=True)]:
        proc.send_signal(signal.SIGTERM)


WAYS: dict[str, Callable[[ServiceProcess], None]] = {
    # supervisord's stopasgroup; `kill -TERM -- -PGID`
    "SIGTERM to the process group": _group(signal.SIGTERM),
    "SIGINT to the process group": _group(signal.SIGINT),
    # the terminal sends SIGINT to its foreground process group
    "Ctrl-C in a terminal": _ctrl_c,
    "SIGTERM to the service": _service_only,
    "SIGTERM to every process at once (systemd's default)": _every_descendant,
}


def _stack(svc: ServiceProcess, data_dir: Path) -> list[psutil.Process]:
    """The service's processes, PostgreSQL's and their children, while they run."""
    assert svc.proc is not None
    service = psutil.Process(svc.proc.pid)
    postmaster = psutil.Process(int((data_dir / PGDATA / "postmaster.pid").read_text().split()[0]))
    return [*service.children(recursive=True), postmaster, *postmaster.children()]


def _left_running(stack: list[psutil.Process], data_dir: Path) -> list[int]:
    """Those of `stack` still running, and any process naming `data_dir` (the server's
    arguments, PostgreSQL's -D)."""
    left = {p.pid for p in stack if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(data_dir) in arg for arg in proc.info["cmdline"] or []):
            left.add(proc.pid)
    return sorted(left)


def _exit_status(svc: ServiceProcess) -> int:
    assert svc.proc is not None
    code = svc.proc.wait(timeout=60)
    svc.output.join()
    return code


@pytest.mark.embedded
@pytest.mark.timeout(600)
def test_every_way_of_stopping_drains_then_stops_the_server_then_postgres(
    embedded_service: ServiceFactory,
) -> None:
    for n, (way, stop) in enumerate(WAYS.items()):
        svc = embedded_service({"shutdown_grace": 30}, start=False)
        server_log = Path(svc.config["data_dir"]) / SERVER_LOG
        logged_before = server_log.stat().st_size if server_log.exists() else 0
        if stop is _ctrl_c:
            _start_in_a_terminal(svc)
        else:
            svc.start(timeout=120)
        data_dir = Path(svc.config["data_dir"])
        svc.wait_for_log("runner: Prefect API", 120)
        if n == 1:
            # The previous stop was clean; this start found a garbled pid file and cleared it.
            assert f"removing {data_dir / PGDATA / 'postmaster.pid'}: it is garbled" in svc.log()
        jobs = [f"job-{n}-{i}.yaml" for i in range(2)]
        for job in jobs:
            svc.drop(job, "timeout: 30\nsleep: 2\n")
        for job in jobs:
            svc.wait_for_log(f"job started: {job}", 60)
        stack = _stack(svc, data_dir)
        stop(svc)
        assert _exit_status(svc) == 0, way
        for job in jobs:
            assert svc.wait_result(job, timeout=1)["status"] == "completed", way
        log = svc.log()
        assert "received SIG" in log, way
        assert "Traceback" not in log and "Error flushing" not in log, f"{way}:\n{log}"
        # The server's own output, in its log file: clean too.
        server_output = server_log.read_bytes()[logged_before:].decode(errors="replace")
        assert "Traceback" not in server_output, f"{way}:\n{server_output}"
        assert "Error flushing" not in server_output, f"{way}:\n{server_output}"
        assert _left_running(stack, data_dir) == [], way
        if n == 0:
            # A crash (or a full disk) while PostgreSQL wrote it: the next start clears it.
            (data_dir / PGDATA / "postmaster.pid").write_bytes(b"\0\0\0\0")


@pytest.mark.embedded
def test_kill_9_of_the_service_stops_the_server_and_postgres(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service()
    data_dir = Path(svc.config["data_dir"])
    svc.drop("killed.yaml", "timeout: 30\nsleep: 20\n")
    svc.wait_for_log("job started: killed.yaml", 60)
    stack = _stack(svc, data_dir)
    assert svc.proc is not None
    os.kill(svc.proc.pid, signal.SIGKILL)
    # The server sees its pipe close: it stops uvicorn, then PostgreSQL, then exits (and
    # closes its end of the output pipe).
    assert _exit_status(svc) == -signal.SIGKILL
    wait_until(lambda: not _left_running(stack, data_dir), 30, interval=0.2)
    assert len(claim_folders(svc.processing)) == 1  # runs again at the next start
    assert "Traceback" not in svc.log(), svc.log()

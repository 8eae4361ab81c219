"""dropflow under systemd: a real `dropflow run` notifying a real AF_UNIX datagram socket the
test binds (systemd's side of `Type=notify`), and the units in `deploy/` checked by
`systemd-analyze` where it exists."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.harness import ROOT, wait_until

DEPLOY = ROOT / "deploy"
UNITS = ("dropflow.service", "dropflow-worker.service")
MOST_EXPOSURE = 4.5
WATCHDOG_USEC = 1_000_000  # WATCHDOG=1 every 0.5 s


class _Systemd:
    """The notify socket's receiving end, as systemd holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> str | None:
        """The next message, or None if none came within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def until(self, check: str, timeout: float = 30) -> list[tuple[float, str]]:
        """Every message (with its arrival time) up to the first that holds the text `check`."""
        seen: list[tuple[float, str]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is None:
                break
            seen.append((time.monotonic(), message))
            if check in message:
                return seen
        raise AssertionError(f"no {check!r} in {timeout}s; got {[m for _, m in seen]}")

    def drain(self) -> list[str]:
        messages = []
        while (message := self.receive(0.001)) is not None:
            messages.append(message)
        return messages


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[_Systemd]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the notify protocol and SIGSTOP checks are Linux's")
    receiver = _Systemd(tmp_path / "notify")
    yield receiver
    receiver.sock.close()


def _stopped(pid: int) -> bool:
    """Whether `pid` is stopped (state T in /proc/<pid>/stat): SIGSTOP has taken effect."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


@pytest.mark.timeout(120)
def test_ready_status_watchdog_until_stopped_and_stopping(
    service: ServiceFactory, systemd: _Systemd
) -> None:
    svc = service(
        extra_env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    )
    ready = systemd.until("READY=1")[-1][1]
    assert "STATUS=serving 1 route: 0 running, 0 waiting; 0 completed" in ready

    svc.drop("a.yaml", "sleep: 0\n")
    assert svc.wait_result("a.yaml")["status"] == "completed"
    done = systemd.until("1 completed", timeout=5)[-1][1]
    assert done == (
        "STATUS=serving 1 route: 0 running, 0 waiting; 1 completed, 0 canceled, 0 error; runner up"
    )

    pings: list[float] = []
    while len(pings) < 5:
        pings += [at for at, m in systemd.until("WATCHDOG=1") if m == "WATCHDOG=1"]
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    assert 0.4 <= gaps[len(gaps) // 2] <= 0.9, gaps  # half of WATCHDOG_USEC, on the loop's tick

    # A loop that stops turning stops pinging: the whole process stopped, as a wedged one.
    assert svc.proc is not None
    pid = svc.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(pid), timeout=5, interval=0.01)
        systemd.drain()  # sent before it stopped
        assert systemd.receive(2 * WATCHDOG_USEC / 1e6) is None  # systemd would restart it now
    finally:
        os.kill(pid, signal.SIGCONT)
    systemd.until("WATCHDOG=1", timeout=5)

    assert svc.stop(signal.SIGTERM) == 0  # what it sent is queued on the socket meanwhile
    stopping = systemd.until("STOPPING=1", timeout=5)[-1][1]
    assert stopping == "STOPPING=1\nSTATUS=stopping: 0 running"
    assert systemd.drain() == []  # nothing after it, no watchdog ping either


# -- the units ---------------------------------------------------------------------------------


def _service_section(unit: str) -> dict[str, list[str]]:
    """The unit's [Service] settings, each with every value it is given (in order)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (DEPLOY / unit).read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_service_unit_is_notified_and_watched() -> None:
    service = _service_section("dropflow.service")
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) > 0
    # One mount for the inbox and processing: a claim is a rename between them (EXDEV across two).
    assert service["ReadWritePaths"] == ["/opt/dropflow"]
    # `prefect worker` speaks no notify protocol: a notify unit would never become ready.
    assert _service_section("dropflow-worker.service")["Type"] == ["exec"]


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("no systemd-analyze here")
    return found


def _checkable(unit: str, tmp_path: Path) -> Path:
    """A copy of `unit` that `systemd-analyze verify` can check here: its ExecStart names a
    program that exists (`/opt/dropflow/.venv/bin/...` does not on this machine), nothing else
    changed. `verify` checks that the program exists and is executable, which is all a stand-in
    can show."""
    text = (DEPLOY / unit).read_text()
    program = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert program is not None and program[1].startswith("/opt/dropflow/.venv/bin/"), unit
    stand_in = Path(sys.executable).parent / Path(program[1]).name
    if not stand_in.exists():
        stand_in = Path(sys.executable)
    copy = tmp_path / unit
    copy.write_text(text.replace(program[1], str(stand_in), 1))
    return copy


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_verifies(unit: str, tmp_path: Path) -> None:
    analyze = _analyze()
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(_checkable(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # `verify` also loads the units the unit names (network-online.target...), which it can
    # only find on a machine booted with systemd: those lines are about the host, not the unit.
    problems = [
        line
        for line in done.stderr.splitlines()
        if unit in line or "Unknown" in line or "nvalid" in line
    ]
    assert done.returncode == 0 and not problems, done.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_is_hardened(unit: str) -> None:
    done = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(DEPLOY / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score[1]) <= MOST_EXPOSURE, done.stdout

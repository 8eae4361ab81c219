"""systemd's notify protocol in-process: a real AF_UNIX datagram socket bound by the test, real
`Vitals`, and a clock the test turns (the rate limits are about time)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.service import notify
from watcher.service.notify import SystemdNotifier, status_line
from watcher.service.vitals import JobSeen, Vitals

unix_datagrams = pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX") or sys.platform == "win32", reason="no AF_UNIX datagrams"
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def _received(sock: socket.socket) -> list[str]:
    """Every message queued on `sock` (the notifier sends synchronously, so all are there)."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def systemd() -> Iterator[tuple[str, socket.socket]]:
    """A notify socket standing in for systemd's: its path and the bound socket."""
    if not hasattr(socket, "AF_UNIX") or sys.platform == "win32":
        pytest.skip("no AF_UNIX datagrams")
    # In /tmp: a socket's path has at most 104 bytes on macOS, where tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="dropflow-", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = _bind(path)
    yield path, sock
    sock.close()
    shutil.rmtree(folder)


def _job(n: int) -> JobSeen:
    return JobSeen("default", f"claim-{n}", f"job-{n}.yaml", f"job-{n}.yaml", None)


def test_without_notify_socket_nothing_is_notified() -> None:
    environ = {"PATH": "/bin", "WATCHDOG_USEC": "1000000"}
    assert SystemdNotifier.from_environment(environ) is None
    assert environ == {"PATH": "/bin"}  # a child never sees a watchdog meant for the service
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": ""}) is None


def test_without_unix_sockets_notify_socket_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Windows' socket module: no AF_UNIX (the boundary is the platform's socket module).
    monkeypatch.delattr(socket, "AF_UNIX", raising=False)
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    with caplog.at_level(logging.WARNING):
        assert SystemdNotifier.from_environment(environ) is None
    assert "no AF_UNIX sockets" in caplog.text
    assert environ == {}


def test_the_variables_are_taken_out_and_the_watchdog_is_half_of_its_limit(
    systemd: tuple[str, socket.socket],
) -> None:
    path, _ = systemd
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}
    notifier = SystemdNotifier.from_environment(environ, pid=42)
    assert notifier is not None and notifier.watchdog_interval == 1.5
    assert environ == {}
    notifier.close()


def test_a_watchdog_for_another_pid_or_a_bad_limit_is_no_watchdog(
    systemd: tuple[str, socket.socket],
) -> None:
    path, _ = systemd
    for extra in ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "41"}, {"WATCHDOG_USEC": "x"}):
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path, **extra}, pid=42)
        assert notifier is not None and notifier.watchdog_interval is None, extra
        notifier.close()


@unix_datagrams
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets: Linux only")
def test_an_abstract_socket_is_reached_by_its_at_name() -> None:
    name = f"dropflow-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier is not None
        assert notifier.send("READY=1", "STATUS=hello")
        assert _received(sock) == ["READY=1\nSTATUS=hello"]
        notifier.close()
    finally:
        sock.close()


@unix_datagrams
def test_a_socket_gone_is_one_warning_and_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING):
        assert not notifier.send("WATCHDOG=1")
        assert not notifier.send("WATCHDOG=1")
    assert caplog.text.count("cannot notify systemd") == 1
    notifier.close()


def test_ready_status_watchdog_and_stopping_follow_the_vitals(
    systemd: tuple[str, socket.socket],
) -> None:
    path, sock = systemd
    clock = _Clock()
    vitals = Vitals(["default"])
    vitals.runner_up = lambda: (True, "")
    notifier = SystemdNotifier(path, watchdog_usec=1_000_000, clock=clock)
    notifier.attach(vitals)

    vitals.set_phase("serving")
    ready = (
        "READY=1\nSTATUS=serving 1 route: 0 running, 0 waiting; "
        "0 completed, 0 canceled, 0 error; runner up"
    )
    assert _received(sock) == [ready]
    vitals.beat()
    assert _received(sock) == ["WATCHDOG=1"]
    clock.now += 0.4
    vitals.beat()  # too early for either
    assert _received(sock) == []
    clock.now += 0.1
    vitals.beat()  # half of the watchdog's second; the status has not changed
    assert _received(sock) == ["WATCHDOG=1"]

    vitals.set_phase("stopping")
    assert _received(sock) == ["STOPPING=1\nSTATUS=stopping: 0 running"]
    vitals.set_phase("stopped")
    assert _received(sock) == []


def test_no_beat_no_watchdog(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    vitals = Vitals(["default"])
    notifier = SystemdNotifier(path, watchdog_usec=40_000)  # every 20 ms, on the real clock
    notifier.attach(vitals)
    vitals.beat()
    assert _received(sock) == ["WATCHDOG=1"]
    sock.settimeout(0.3)  # a wedged loop: no beat for 15 intervals
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    vitals.beat()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_status_is_sent_when_it_changes_and_at_most_once_a_second(
    systemd: tuple[str, socket.socket],
) -> None:
    path, sock = systemd
    clock = _Clock()
    vitals = Vitals(["default"])
    vitals.runner_up = lambda: (True, "")
    notifier = SystemdNotifier(path, clock=clock)  # no watchdog: only STATUS lines
    notifier.attach(vitals)
    vitals.set_phase("serving")
    _received(sock)

    sent: list[str] = []
    for n in range(30):  # a job received every 0.1 s for 3 s, a beat after each
        clock.now += 0.1
        vitals.received(_job(n))
        vitals.beat()
        sent += _received(sock)
    assert [line.split(";")[0] for line in sent] == [
        "STATUS=serving 1 route: 0 running, 10 waiting",
        "STATUS=serving 1 route: 0 running, 20 waiting",
        "STATUS=serving 1 route: 0 running, 30 waiting",
    ]

    clock.now += 0.5
    vitals.started(_job(0), "wait")
    vitals.finished(_job(0), {"status": "error"})
    vitals.beat()  # changed, but within the second: held back
    assert _received(sock) == []
    clock.now += 0.5
    vitals.beat()  # the change is not lost: it goes at the next second
    assert _received(sock) == [
        "STATUS=serving 1 route: 0 running, 29 waiting; 0 completed, 0 canceled, 1 error; runner up"
    ]
    clock.now += 5
    vitals.beat()  # nothing changed: nothing sent
    assert _received(sock) == []
    notifier.close()


def test_a_standby_is_ready_and_says_so(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    vitals = Vitals(["default"])
    notifier = SystemdNotifier(path, watchdog_usec=2_000_000, clock=_Clock())
    notifier.attach(vitals)
    vitals.set_phase("standby")
    vitals.beat()  # its loop beats too: the watchdog sees a live standby
    assert _received(sock) == [f"READY=1\nSTATUS={notify.STANDBY_STATUS}", "WATCHDOG=1"]
    notifier.close()


def test_the_status_line_names_a_runner_or_an_inbox_down() -> None:
    vitals = Vitals(["a", "b"])
    vitals.set_phase("serving")
    vitals.runner_up = lambda: (False, "embedded server restarting")
    vitals.inbox_alive("b", False)
    assert status_line(vitals.snapshot()) == (
        "serving 2 routes: 0 running, 0 waiting; 0 completed, 0 canceled, 0 error; "
        "runner down: embedded server restarting; inbox observer down: b"
    )

"""Tell systemd how the service does, over the sd_notify protocol (a `Type=notify` unit).

systemd passes `NOTIFY_SOCKET`, an `AF_UNIX` datagram socket (in the abstract namespace when it
starts with `@`), and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The service
sends, as newline-separated `KEY=value` datagrams:

- `READY=1` once it watches its folders, and also as a standby (with `STATUS=standby: ...`):
  systemd fails a start that never says READY within `TimeoutStartSec=`, and a standby that
  waits for hours is running as intended;
- `STATUS=` with the counts, when they change and at most once a second;
- `WATCHDOG=1` from the serve loop's beat, at half of `WATCHDOG_USEC`: a loop that stops
  turning stops sending, and systemd restarts the service;
- `STOPPING=1` when it stops (systemd then stops expecting `WATCHDOG=1`).

The protocol is written here rather than taken from the `sdnotify` package: it is one
`sendto` per message, and `sdnotify` reads the environment itself, leaves out the watchdog
variables, keeps one connected socket (stale if systemd re-creates its socket) and, by
default, swallows every error silently.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

from watcher.service.vitals import Phase, Snapshot, Vitals

__all__ = ["ENVIRONMENT", "STATUS_INTERVAL", "SystemdNotifier", "status_line"]

logger = logging.getLogger(__name__)

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""What systemd sets for a notify service; taken out of the environment by
`SystemdNotifier.from_environment`, so that no child (the embedded server, PostgreSQL, a flow's
subprocess) talks to the unit's socket in the service's name."""

STATUS_INTERVAL = 1.0
"""Seconds between two `STATUS=` lines at most (a phase change is sent at once)."""

STANDBY_STATUS = "standby: another dropflow serves the folders; taking over when it stops"


class SystemdNotifier:
    """Sends the service's vitals to systemd's notify socket; see the module's docstring."""

    def __init__(
        self,
        address: str,
        *,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`address`: `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
        `watchdog_usec`: `WATCHDOG_USEC`, None without a watchdog.

        Raises:
            OSError: no `AF_UNIX` datagram socket here (Windows).
        """
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        """Seconds between two `WATCHDOG=1`: half of systemd's limit, as sd_watchdog_enabled(3)
        advises."""
        self._clock = clock
        family = getattr(socket, "AF_UNIX", None)
        if family is None:
            raise OSError("this platform has no AF_UNIX sockets")
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        # The loop must never wait for systemd: a full queue drops the message instead.
        self._socket.setblocking(False)
        self._vitals: Vitals | None = None
        self._last_watchdog: float | None = None
        self._last_status_at: float | None = None
        self._last_status = ""
        self._stopping = False
        self._failing = False

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str], pid: int | None = None
    ) -> SystemdNotifier | None:
        """The notifier systemd asks for in `environ`, or None (not run by systemd as a notify
        service, or no `AF_UNIX` datagram sockets here). Takes the variables of `ENVIRONMENT`
        out of `environ`. `pid`: this process's (`WATCHDOG_PID` names the one to ping)."""
        found = {name: environ.pop(name) for name in ENVIRONMENT if name in environ}
        address = found.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        if not address.startswith(("/", "@")):
            logger.warning("NOTIFY_SOCKET=%s: not a socket path; not notifying systemd", address)
            return None
        watchdog_usec = _watchdog_usec(found, os.getpid() if pid is None else pid)
        try:
            return cls(address, watchdog_usec=watchdog_usec)
        except OSError as exc:
            logger.warning("NOTIFY_SOCKET is set, but %s; not notifying systemd", exc)
            return None

    def attach(self, vitals: Vitals) -> None:
        """Notify from now on as `vitals` change (on the service's event loop)."""
        self._vitals = vitals
        vitals.phase_listeners.append(self._phase_changed)
        vitals.beat_listeners.append(self._beat)

    def send(self, *fields: str) -> bool:
        """Send one message (`KEY=value` fields); whether it went. Never raises: a failure is
        logged once, until a message goes again."""
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failing:
                logger.warning("cannot notify systemd (%s): %s", self._shown_address(), exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("notifying systemd again")
        self._failing = False
        return True

    def close(self) -> None:
        self._socket.close()

    def _phase_changed(self, phase: Phase) -> None:
        if phase == "standby":
            self._tell(STANDBY_STATUS, "READY=1")
        elif phase == "serving":
            self._tell(self._status_line(), "READY=1")
        elif phase in ("stopping", "stopped") and not self._stopping:
            self._stopping = True
            self._tell(self._status_line(), "STOPPING=1")
        if phase == "stopped":
            self.close()

    def _beat(self) -> None:
        now = self._clock()
        if self.watchdog_interval is not None and (
            self._last_watchdog is None or now - self._last_watchdog >= self.watchdog_interval
        ):
            self._last_watchdog = now
            self.send("WATCHDOG=1")
        if self._vitals is None or self._vitals.phase != "serving":
            return
        if self._last_status_at is not None and now - self._last_status_at < STATUS_INTERVAL:
            return
        line = self._status_line()
        if line != self._last_status:
            self._tell(line)

    def _tell(self, status: str, *state: str) -> None:
        """Send the `state` fields (`READY=1`, `STOPPING=1`), then `STATUS=status`."""
        self._last_status_at = self._clock()
        self._last_status = status
        self.send(*state, f"STATUS={status}")

    def _status_line(self) -> str:
        assert self._vitals is not None
        return status_line(self._vitals.snapshot())

    def _shown_address(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address


def status_line(snapshot: Snapshot) -> str:
    """The `STATUS=` text for `snapshot`, all routes summed: `serving 1 route: 2 running,
    5 waiting; 120 completed, 3 canceled, 1 error; runner up`."""
    routes = snapshot.routes.values()
    running = sum(route.in_flight for route in routes)
    if snapshot.phase == "standby":
        return STANDBY_STATUS
    if snapshot.phase in ("stopping", "stopped"):
        return f"{snapshot.phase}: {running} running"
    waiting = sum(route.waiting for route in routes)
    done = {
        status: sum(route.done.get(status, 0) for route in routes)
        for status in ("completed", "canceled", "error")
    }
    count = len(snapshot.routes)
    parts = [
        f"{snapshot.phase} {count} route{'' if count == 1 else 's'}: "
        f"{running} running, {waiting} waiting",
        ", ".join(f"{n} {status}" for status, n in done.items()),
        "runner up" if snapshot.runner_up else f"runner down: {snapshot.runner_reason}",
    ]
    blind = [name for name, route in snapshot.routes.items() if not route.inbox_alive]
    if blind:
        parts.append(f"inbox observer down: {', '.join(blind)}")
    return "; ".join(parts)


def _watchdog_usec(found: dict[str, str], pid: int) -> int | None:
    text = found.get("WATCHDOG_USEC")
    if not text:
        return None
    watchdog_pid = found.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # the watchdog is another process's (an ExecStart= wrapper's, say)
    try:
        usec = int(text)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning("WATCHDOG_USEC=%s: not a number of microseconds; no watchdog", text)
        return None
    return usec

"""The embedded default: a Prefect server, its UI and its database, living with the service.

The server runs in a subprocess with a session of its own (`watcher.server.process`). No signal
stops it: a Ctrl-C in the terminal (SIGINT to the service's group) does not reach it, and
systemd's default stop (SIGTERM to every process of the unit) is ignored, so the service can
drain its running jobs first. It stops when its stdin, a pipe whose other end only the service
holds, reads end-of-file: when the service closes it after the drain, or once the service is
gone however it died (even kill -9), on every platform.

That process first starts the PostgreSQL cluster in `data_dir` (`watcher.server.postgres`), then
serves Prefect's API at `/api` and its UI at `/` on `127.0.0.1:<server_port>`; at the end it
stops uvicorn (and with it Prefect's services), then the cluster.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from watcher.server.startup import LEADS

__all__ = [
    "EmbeddedOptions",
    "EmbeddedServer",
    "EmbeddedServerError",
    "check_data_dir",
    "check_port",
    "full",
    "open_server_log",
]

logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0
"""Seconds to wait for the server to answer; a first start (database set-up) takes 3-5 s."""

HOST = "127.0.0.1"
"""The embedded server listens on loopback only."""

STOP_TIMEOUT = 20.0
"""Seconds `stop` waits for the server process to stop uvicorn and PostgreSQL before killing it."""
RESTART_GRACE = 3.0
"""Seconds a failing server gets to stop before it is killed, when the supervisor restarts it."""

SERVER_LOG = "server.log"
"""In `data_dir`: the server process's own output (Prefect's server, uvicorn, PostgreSQL's
tools). Kept out of the service's log: while PostgreSQL is down, Prefect's server writes a
traceback per failed request, and the service's one WARNING line says what matters."""
SERVER_LOG_MAX_BYTES = 10 * 1024 * 1024
"""A `SERVER_LOG` larger than this at a start is moved to `server.log.1` (replacing it)."""

START_ERROR_FILE = ".embedded-server-error"
"""In `data_dir`: why the server process could not start, for the service's own error."""


GIVEN_DATABASE = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
"""The settings that give the server a database of the user's: then it starts no PostgreSQL."""

MIN_FREE_BYTES = 16 * 1024 * 1024
"""Below this much free space in `data_dir`, PostgreSQL cannot write: the server counts as down."""


class EmbeddedServerError(Exception):
    """The embedded Prefect server did not start."""


def full(folder: Path) -> bool:
    """Whether the file system of `folder` has (almost) no free space or no free inodes."""
    try:
        if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
            return True
        if hasattr(os, "statvfs"):
            stat = os.statvfs(folder)
            return stat.f_files > 0 and stat.f_favail == 0
    except OSError:
        return False
    return False


def _exit_status(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"status {status}"


@dataclass(frozen=True)
class EmbeddedOptions:
    """What the embedded server needs from the config."""

    port: int
    data_dir: Path
    ui: bool
    history_days: float
    fast_start: tuple[str, ...] = LEADS
    """The start-up leads in use (`watcher.server.startup`)."""


def check_port(port: int) -> None:
    """Fail with a message naming `server_port` when `127.0.0.1:port` cannot be listened on."""
    with socket.socket() as sock:
        # The server's own socket will set SO_REUSEADDR too: a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc}"
            raise EmbeddedServerError(
                f"server_port: {HOST}:{port} {reason}; set server_port to a free port, or point "
                "PREFECT_API_URL at a running Prefect server"
            ) from None


def check_data_dir(data_dir: Path) -> None:
    """Fail with a message naming `data_dir` when the history cannot be kept there."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".dropflow-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise EmbeddedServerError(
            f"data_dir: {data_dir} cannot hold the Prefect history: {reason}"
        ) from None


def open_server_log(data_dir: Path) -> IO[bytes]:
    """`data_dir/server.log`, to append to; one that grew past `SERVER_LOG_MAX_BYTES` is kept
    as `server.log.1` and a new one begun."""
    path = data_dir / SERVER_LOG
    with contextlib.suppress(OSError):
        if path.stat().st_size > SERVER_LOG_MAX_BYTES:
            os.replace(path, path.with_name(SERVER_LOG + ".1"))
    return path.open("ab")


_SHORTEST_VACUUM_SECONDS = 3601
"""Prefect's db_vacuum takes a flow-run retention of more than one hour only."""


def server_environment(options: EmbeddedOptions, base: Mapping[str, str]) -> dict[str, str]:
    """The server process's environment: `base` plus the embedded server's settings."""
    from watcher.server.prefect_internals import SERVER_PROCESS_ENVIRONMENT

    env = {
        **base,
        **SERVER_PROCESS_ENVIRONMENT,
        "PREFECT_UI_ENABLED": "true" if options.ui else "false",
        # The UI asks this address for its data; it defaults to port 4200 whatever the port.
        "PREFECT_UI_API_URL": f"http://{HOST}:{options.port}/api",
    }
    if options.history_days > 0:
        # Prefect's own retention: its db_vacuum service deletes flow runs that ended longer
        # ago than this (and their task runs, logs and artifacts), and events, hourly. Prefect
        # refuses a flow-run retention of one hour or less (`gt=timedelta(hours=1)`), which
        # `history_days: 1/24` would give: one second more then. The events' setting is a
        # plain timedelta, which reads ISO 8601 from the environment, not bare seconds.
        seconds = max(int(options.history_days * 86400), _SHORTEST_VACUUM_SECONDS)
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] = str(seconds)
        env["PREFECT_SERVER_EVENTS_RETENTION_PERIOD"] = f"PT{seconds}S"
    env.pop("PREFECT_API_URL", None)
    return env


class EmbeddedServer:
    """A Prefect server on `127.0.0.1:<port>`, in a subprocess of its own."""

    def __init__(
        self,
        options: EmbeddedOptions,
        environment: Mapping[str, str],
        inherit_fds: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        """`inherit_fds`: descriptors the server process keeps open while it lives (the
        `data_dir` lock: held until the server has stopped PostgreSQL)."""
        self.options = options
        self._inherit_fds = inherit_fds
        self.url = f"http://{HOST}:{options.port}/api"
        self.ui_url = f"http://{HOST}:{options.port}" if options.ui else None
        self._environment = dict(environment)
        self._proc: subprocess.Popen[bytes] | None = None
        # A restart runs in a thread of its own (the supervisor's): `stop` makes a start in
        # progress give up, then waits for it, so no server outlives the service.
        self._guard = threading.RLock()
        self._abandon = threading.Event()

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server and wait until it answers; return its API URL.

        Raises:
            EmbeddedServerError: naming `data_dir` or `server_port` when one is unusable.
        """
        with self._guard:
            if self._proc is None:  # else `launch` started it: wait for that one
                self._launch()
            return self._wait_serving(timeout)

    def launch(self) -> None:
        """Start the server process and return at once: `start` then waits for it. The service
        calls it before it imports Prefect, so both imports overlap (`early-server`).

        Raises:
            EmbeddedServerError: as `start`.
        """
        with self._guard:
            self._launch()

    def _start(self, timeout: float = START_TIMEOUT) -> str:
        self._launch()
        return self._wait_serving(timeout)

    def _launch(self) -> None:
        check_data_dir(self.options.data_dir)
        check_port(self.options.port)
        if self.owns_cluster:
            self._clear_stale_pid()
        kwargs: dict[str, object] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
            if self._inherit_fds is not None:
                try:
                    kwargs["pass_fds"] = self._inherit_fds()
                except Exception as exc:  # the data_dir lock: another service took it
                    raise EmbeddedServerError(str(exc)) from exc
        with open_server_log(self.options.data_dir) as log:
            proc = subprocess.Popen(  # type: ignore[call-overload]
                [
                    sys.executable,
                    "-m",
                    "watcher.server.embedded",
                    json.dumps(asdict(self.options), default=str),
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=server_environment(self.options, self._environment),
                **kwargs,
            )
        self._proc = proc

    def _wait_serving(self, timeout: float) -> str:
        proc = self._proc
        assert proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if proc.poll() is not None:
                raise EmbeddedServerError(self._exit_reason(proc.returncode))
            if time.monotonic() > deadline:
                self._stop()
                raise EmbeddedServerError(
                    f"the embedded Prefect server did not answer in {timeout:g}s"
                )
            if self._abandon.is_set():
                raise EmbeddedServerError("the embedded Prefect server's start was given up")
            time.sleep(0.05)
        return self.url

    def _clear_stale_pid(self) -> None:
        """Clear a stale or garbled `postmaster.pid` here, so the service's log says so (the
        server process's own output goes to `SERVER_LOG`)."""
        from watcher.server.postgres import PGDATA, PostgresError, clear_stale_pid

        try:
            clear_stale_pid(self.options.data_dir / PGDATA)
        except PostgresError as exc:
            raise EmbeddedServerError(str(exc)) from None

    def _exit_reason(self, status: int) -> str:
        reason = f"the embedded Prefect server exited with status {status}"
        try:
            cause = (self.options.data_dir / START_ERROR_FILE).read_text(encoding="utf-8")
        except OSError:
            return reason
        return f"{reason}: {cause.strip()}"

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def restart(self) -> str:
        """Stop what is left of the server and its PostgreSQL, and start both again."""
        with self._guard:
            # It is failing already: a short grace, then kill -9 (its PostgreSQL is stopped
            # after it), so jobs wait seconds, not a full graceful stop.
            self._stop(grace=RESTART_GRACE)
            return self._start()

    @property
    def owns_cluster(self) -> bool:
        """Whether the server runs its own PostgreSQL in `data_dir` (no database URL given)."""
        return not any(self._environment.get(name) for name in GIVEN_DATABASE)

    def problem(self, timeout: float = 5.0) -> str | None:
        """Why the server cannot serve now, or None when it can: checks its process, its
        `data_dir`, its PostgreSQL, free space, and Prefect's readiness (the API reaches its
        database). Blocking: call it in a thread."""
        proc, data_dir = self._proc, self.options.data_dir
        if proc is None:
            return "the embedded Prefect server is not running"
        status = proc.poll()
        if status is not None:
            return f"the embedded Prefect server exited ({_exit_status(status)})"
        if self.owns_cluster:
            from watcher.server.postgres import PGDATA, cluster_running

            if not (data_dir / PGDATA).is_dir():
                return f"data_dir {data_dir} was deleted"
            if full(data_dir):
                return f"the file system of data_dir {data_dir} is full"
            if not cluster_running(data_dir):
                return f"PostgreSQL in {data_dir / PGDATA} is not running"
        try:
            with urllib.request.urlopen(f"{self.url}/ready", timeout=timeout) as response:
                if response.status == 200:
                    return None
                return f"the Prefect API answers {response.status} to /ready"
        except urllib.error.HTTPError as exc:
            return f"the Prefect API cannot reach its database ({exc.code} on /ready)"
        except OSError as exc:
            return f"the Prefect API does not answer ({getattr(exc, 'reason', exc)})"

    def stop(self) -> None:
        """Stop the server: close its stdin, then kill it if it is still there after
        `STOP_TIMEOUT` seconds. Its PostgreSQL is stopped too, also when the server died
        without stopping it. A start in progress in another thread gives up first."""
        self._abandon.set()
        with self._guard:
            self._abandon.clear()
            self._stop()

    def _stop(self, grace: float = STOP_TIMEOUT) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if proc.stdin is not None:
                proc.stdin.close()  # end-of-file: it stops uvicorn, then PostgreSQL, then exits
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and self.owns_cluster:
            # A server killed with -9 leaves its PostgreSQL running: nothing may outlive us.
            from watcher.server.postgres import cluster_running, stop_cluster

            if cluster_running(self.options.data_dir):
                stop_cluster(self.options.data_dir)


if __name__ == "__main__":
    from watcher.server.process import main

    raw = json.loads(sys.argv[1])
    main(
        EmbeddedOptions(
            port=int(raw["port"]),
            data_dir=Path(raw["data_dir"]),
            ui=bool(raw["ui"]),
            history_days=float(raw["history_days"]),
            fast_start=tuple(raw.get("fast_start", LEADS)),
        )
    )

"""Health and metrics over HTTP, on `metrics_host:metrics_port`, from the service's vitals:

- `/healthz`: 200 while the service's loop turns (a standby's too) and every route's inbox
  observer runs; else 503;
- `/readyz`: 200 only while the service owns its folders and its runner can run jobs; else
  503;
- `/metrics`: Prometheus text (`watcher.service.metrics`).

Both 503s carry a JSON body naming each problem. The server is the standard library's, in a
thread of its own (each request in a thread too), so a wedged service loop still answers
`/healthz` with a 503 instead of timing out. Not `prometheus_client.start_http_server`: it
serves the metrics at every path, and has no place for the health checks.

The port (docs/operating.md#health): a service that finds it taken fails at start
(`EndpointError`), unless it may be a standby and another dropflow holds its folders: that
owner, sharing the config, is likely what holds the port. Then it keeps trying, and serves as
soon as the port is free (the owner stopped or died).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from watcher import defaults
from watcher.config.settings import Settings
from watcher.folders.lock import is_held
from watcher.service.metrics import Metrics
from watcher.service.vitals import Phase, Snapshot, Vitals

__all__ = ["EndpointError", "Endpoints", "endpoints", "problems_of_health", "problems_of_readiness"]

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.5
"""How often a service waiting for its port tries it again."""
TAKEOVER_GRACE = 5.0
"""Seconds a standby that took over waits for the port before it warns: the owner it
replaces lets the folders go a moment before the port."""

_NOT_SERVING: dict[Phase, str] = {
    "starting": "starting: the folders are not taken yet",
    "standby": "standby: another dropflow serves the folders; this one takes over when it stops",
    "stopping": "stopping: no new job starts",
    "stopped": "stopped",
}
_IN_USE = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}


class EndpointError(Exception):
    """The endpoints cannot listen where the config says; the message names the key."""


def problems_of_health(snap: Snapshot, beat_limit: float = defaults.HEALTH_BEAT_LIMIT) -> list[str]:
    """Why the service is not alive (`/healthz`), or nothing."""
    problems = []
    if snap.phase in ("stopping", "stopped"):
        pass  # its loop ended on purpose: the drain has a deadline of its own (shutdown_grace)
    elif snap.beat_age_s is None:
        problems.append("loop: it has not turned yet")
    elif snap.beat_age_s > beat_limit:
        problems.append(
            f"loop: it has not turned for {snap.beat_age_s:.1f}s (limit {beat_limit:g}s)"
        )
    for name, route in snap.routes.items():
        if not route.inbox_alive:
            problems.append(f"route {name}: its inbox observer is not running")
    return problems


def problems_of_readiness(snap: Snapshot) -> list[str]:
    """Why the service cannot take jobs now (`/readyz`), or nothing."""
    if snap.phase != "serving":
        return [_NOT_SERVING[snap.phase]]
    if not snap.runner_up:
        return [f"runner down: {snap.runner_reason}"]
    return []


class Endpoints:
    """The HTTP server of `/healthz`, `/readyz` and `/metrics`."""

    def __init__(
        self,
        vitals: Vitals,
        host: str,
        port: int,
        *,
        beat_limit: float = defaults.HEALTH_BEAT_LIMIT,
    ) -> None:
        self.vitals = vitals
        self.host, self.port = host, port
        self.beat_limit = beat_limit
        self.metrics = Metrics(vitals)
        self.bound = threading.Event()
        """Set once the server listens (at once, or when a standby got the port)."""
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._serving_since: float | None = None
        vitals.phase_listeners.append(self._phase_changed)

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the port the OS chose for port 0)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, may_wait: Callable[[], bool] = lambda: False) -> None:
        """Listen now; if the port is taken and `may_wait()`, keep trying in a thread.

        Raises:
            EndpointError: the address cannot be listened on (taken, and not `may_wait()`).
        """
        try:
            self._listen()
        except OSError as exc:
            if exc.errno not in _IN_USE:
                raise EndpointError(
                    f"metrics_host, metrics_port: cannot listen on {self.where}: {exc}"
                ) from None
            if not may_wait():
                raise EndpointError(
                    f"metrics_port: {self.where} is in use; set metrics_port to a free port"
                ) from None
            logger.info(
                "health and metrics: %s is in use (by the dropflow that serves the folders?); "
                "serving there once it is free",
                self.where,
            )
            self._thread(self._keep_trying, "dropflow-metrics-wait")

    def stop(self) -> None:
        """Stop serving (or trying to); waits for the server's thread."""
        self._stopping.set()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in list(self._threads):
            thread.join()

    def _listen(self) -> None:
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
        with self._lock:  # `stop` shuts down only a server whose thread runs
            if self._stopping.is_set():
                return
            self._server = _Server((self.host, self.port), family, self)
            self._thread(self._server.serve_forever, "dropflow-metrics", 0.2)
            self.bound.set()
        logger.info("health and metrics at http://%s/ (/healthz, /readyz, /metrics)", self.where)

    def _keep_trying(self) -> None:
        warned = False
        while not self._stopping.wait(RETRY_SECONDS):
            try:
                self._listen()
                return
            except OSError as exc:
                if exc.errno not in _IN_USE:
                    logger.error("health and metrics: cannot listen on %s: %s", self.where, exc)
                    return
            since = self._serving_since
            if not warned and since is not None and time.monotonic() - since > TAKEOVER_GRACE:
                logger.warning(
                    "serving the folders, but %s is still in use: no health or metrics there "
                    "until it is free (still trying)",
                    self.where,
                )
                warned = True

    def _thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _phase_changed(self, phase: Phase) -> None:
        if phase == "serving":
            self._serving_since = time.monotonic()

    # -- the answers -----------------------------------------------------------------------

    def answer(self, path: str, accept: str) -> tuple[int, bytes, str]:
        """The status, body and content type for a GET of `path`."""
        if path == "/metrics":
            body, content_type = self.metrics.exposition(accept)
            return 200, body, content_type
        if path in ("/healthz", "/readyz"):
            snap = self.vitals.snapshot()
            if path == "/healthz":
                key, problems = "healthy", problems_of_health(snap, self.beat_limit)
            else:
                key, problems = "ready", problems_of_readiness(snap)
            report = {key: not problems, "phase": snap.phase, "problems": problems}
            body = (json.dumps(report) + "\n").encode()
            return 503 if problems else 200, body, "application/json"
        return 404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR lets a restart bind past TIME_WAIT on POSIX; on Windows it would let two
    # processes bind one port at once (that is what SO_EXCLUSIVEADDRUSE is for there).
    allow_reuse_address = os.name != "nt"

    def __init__(self, address: tuple[str, int], family: int, endpoints: Endpoints) -> None:
        self.address_family = family
        self.endpoints = endpoints
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("health and metrics: answering %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        status, content, content_type = self.server.endpoints.answer(
            path, self.headers.get("Accept", "")
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health and metrics: " + format, *args)


@contextlib.contextmanager
def endpoints(settings: Settings, vitals: Vitals, *, standby: bool) -> Iterator[Endpoints | None]:
    """Serve the endpoints of `settings` (none without `metrics_port`) while in the block.

    Raises:
        EndpointError: on entry, when the address cannot be listened on and the service will
            not be a standby (`standby` allowed, and another dropflow holds its folders).
    """
    if settings.metrics_port is None:
        yield None
        return

    def held_elsewhere() -> bool:
        return standby and any(is_held(r.inbox, r.processing) for r in settings.served.values())

    served = Endpoints(vitals, settings.metrics_host, settings.metrics_port)
    served.start(may_wait=held_elsewhere)
    try:
        yield served
    finally:
        served.stop()

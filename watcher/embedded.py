"""The embedded default: a Prefect API server that lives and dies with the service.

Prefect's own ephemeral mode starts the same server (uvicorn on
`prefect.server.api.server:create_app`) but in dropflow's process group, so a Ctrl-C in the
terminal (SIGINT to the whole group) or systemd's default stop (SIGTERM to the whole cgroup)
kills the server while the service is still draining its running jobs. Here the server gets a
session of its own and is stopped only after the drain. It also exits when the service dies
however it dies (even kill -9): it watches its stdin, a pipe whose other end only the service
holds, and the pipe reads end-of-file once the service is gone, on every platform.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import IO

__all__ = ["EmbeddedServer", "EmbeddedServerError"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0
"""Seconds to wait for the server to answer; a first start (database set-up) takes 10-20 s."""


class EmbeddedServerError(Exception):
    """The embedded Prefect server did not start."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A Prefect API server on a free loopback port, in a subprocess of its own."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._environment = dict(environment)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server and wait until it answers; return its API URL."""
        env = {
            **self._environment,
            "PREFECT_UI_ENABLED": "0",
            # What Prefect's ephemeral mode sets: only the services a local API needs.
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        kwargs: dict[str, object] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, "-m", "watcher.embedded", "127.0.0.1", str(self.port)],
            stdin=subprocess.PIPE,
            env=env,
            **kwargs,
        )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"the embedded Prefect server exited with status {self._proc.returncode}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError(
                    f"the embedded Prefect server did not answer in {timeout:g}s"
                )
            time.sleep(0.1)
        return self.url

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server: SIGTERM (CTRL_BREAK on Windows), then kill after 10 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the server's watcher sees end-of-file and exits
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_when_parent_is_gone(stdin: IO[bytes]) -> None:
    stdin.read()  # returns only at end-of-file: the service closed the pipe or died
    os._exit(0)


def main(host: str, port: int) -> None:
    """The server process: uvicorn serving Prefect's API app until the service goes away."""
    import uvicorn

    watch = threading.Thread(target=_exit_when_parent_is_gone, args=(sys.stdin.buffer,))
    watch.daemon = True
    watch.start()
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

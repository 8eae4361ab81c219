"""The peers: what each one runs, how jobs reach it, and its process from start to stop.

Every peer is one process the bench starts in a fresh folder with a fresh PREFECT_HOME (never
~/.prefect), in a session of its own so it can be stopped with everything it started. Peers
that watch an inbox get job files renamed into it; the floors, which have no watcher, get the
same jobs as lines on stdin.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import yaml

from bench.jobfile import JobSpec

__all__ = ["PEERS", "ROOT", "Peer", "PeerProcess"]

ROOT = Path(__file__).resolve().parent.parent

# No peer may reach the internet (there is none here) or a user's Prefect profile.
_BASE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
}

_API_URL = re.compile(r"http://127\.0\.0\.1:\d+/api")

Delivery = Literal["inbox", "stdin"]


@dataclass(frozen=True)
class Peer:
    """One way of turning jobs into results."""

    key: str
    label: str
    delivery: Delivery
    ready_text: str
    uses_prefect: bool
    # Largest number of jobs run per workload; more are scaled from this sample.
    sample: dict[str, int] = field(default_factory=dict)

    def command(self, root: Path, concurrency: int) -> list[str]:
        """The peer's command line, for a run rooted at `root`."""
        py = sys.executable
        inbox, results, done = str(root / "inbox"), str(root / "results"), str(root / "archive")
        config = ["run", "--config", str(root / "config.yaml")]
        if self.key in ("dropflow", "dropflow-direct"):
            return [py, "-m", "watcher", *config]
        if self.key == "naive":
            return [py, "-m", "bench.naive", inbox, results, done]
        if self.key == "per-file":
            return [py, "-m", "bench.per_file", inbox, results, done]
        mode = self.key.removeprefix("floor-")
        return [py, "-m", "bench.floors", mode, results, str(concurrency)]


_SLOW = {"W1": 20, "W2": 10, "W3r": 10, "W3i": 10}

# Order of the table. The sampled peers come last: they take longest.
PEERS: tuple[Peer, ...] = (
    Peer("dropflow", "dropflow (embedded, as shipped)", "inbox", "watching ", True),
    Peer("dropflow-direct", "dropflow, `runner: direct`", "inbox", "watching ", False),
    Peer("floor-prefect", "Prefect floor", "stdin", "READY", True),
    Peer("floor-direct", "No-Prefect floor", "stdin", "READY", False),
    Peer("naive", "naive handler (seed)", "inbox", "READY", True, _SLOW),
    Peer("per-file", "process per file", "inbox", "READY", True, _SLOW),
)


class PeerProcess:
    """A running peer: start it, hand it jobs, stop it."""

    def __init__(self, peer: Peer, root: Path, concurrency: int) -> None:
        self.peer = peer
        self.root = root
        self.inbox = root / "inbox"
        self.results = root / "results"
        self.log_path = root / "peer.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._stdin: IO[bytes] | None = None

    def start(self) -> None:
        """Start the peer's process; `wait_ready` says when it listens."""
        for folder in (self.inbox, self.results, self.root / "archive"):
            folder.mkdir(parents=True, exist_ok=True)
        if self.peer.key.startswith("dropflow"):
            config = {
                "inbox": "inbox",
                "results": "results",
                "archive": "archive",
                "processing": "processing",
                "runner": "direct" if self.peer.key == "dropflow-direct" else "prefect",
            }
            (self.root / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, **_BASE_ENV, "PREFECT_HOME": str(self.root / "prefect-home")}
        env.pop("PREFECT_API_URL", None)  # every peer runs on its embedded default
        log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.peer.command(self.root, self.concurrency),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if self.peer.delivery == "stdin" else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._stdin = self.proc.stdin

    def log(self) -> str:
        """Everything the peer printed so far."""
        return self.log_path.read_text(errors="replace")

    def api_url(self) -> str | None:
        """The Prefect API the peer said it uses (dropflow and the floors log it)."""
        found = _API_URL.search(self.log())
        return found.group(0) if found else None

    def wait_ready(self, timeout: float) -> None:
        """Block until the peer listens; raise if it exits or takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while self.peer.ready_text not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.key} exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.peer.key} not ready after {timeout:g}s")
            time.sleep(0.05)

    def submit(self, spec: JobSpec, in_place: bool = False) -> float:
        """Hand over one job; return the monotonic time it counts as dropped.

        `in_place` writes the job file in the inbox itself (one open, write, close) instead of
        renaming it in; the floors, which read stdin, get the same line either way.
        """
        if self._stdin is not None:
            self._stdin.write(spec.line().encode())
            self._stdin.flush()
            return time.monotonic()
        if in_place:
            (self.inbox / spec.name).write_text(spec.yaml())
            return time.monotonic()  # from the close: before it, no watcher may take the file
        # A hidden temp file in the inbox, then a rename: the careful writer's drop, which the
        # service takes at once (no settle wait) and the others see as a move.
        temp = self.inbox / f".{spec.name}.part"
        temp.write_text(spec.yaml())
        os.rename(temp, self.inbox / spec.name)
        return time.monotonic()

    def stop(self, timeout: float = 20) -> None:
        """Stop the peer and everything it started (its own session)."""
        if self.proc is None:
            return
        if self._stdin is not None:
            with contextlib.suppress(OSError):
                self._stdin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Anything left in the session (an embedded server, a child) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()

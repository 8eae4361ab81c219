"""What the service can tell about itself while it runs: its phase, the beat of its loop, each
route's jobs (waiting, running, done), and the runner's health.

The service and its pipelines write these; whatever tells the outside reads them: the health
and metrics endpoints, systemd's notify socket, Prefect events. Two kinds of reader:

- `JobObserver`s are called on the service's event loop at each step of each job (received,
  started, finished). They must not block: they count, or hand the step to a queue.
- Snapshot readers (an HTTP handler's thread) call `snapshot()`, which copies under a lock.

Listeners of `beat` are called from the loop on every turn of its tick (about ten times a
second): a loop that stops turning stops beating, which is what a watchdog must see.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = ["JobObserver", "JobSeen", "Phase", "RouteSnapshot", "Snapshot", "Vitals"]

Phase = Literal["starting", "standby", "serving", "stopping", "stopped"]


@dataclass(frozen=True)
class JobSeen:
    """One job as the observers see it."""

    route: str
    claim_id: str
    file: str
    """The job file's name."""
    relative: str
    """Its path relative to the route's inbox (its name, or `subfolder/name`)."""
    dropped_at: float | None
    """When it was dropped (the file's mtime, wall clock), None if unknown."""
    recovered: bool = False
    """Claimed before this service started (found in processing at its start): it was
    `received` by the service that claimed it."""


class JobObserver(Protocol):
    """Told each step of each job, on the service's event loop; must not block."""

    def received(self, job: JobSeen) -> None:
        """The job was claimed (or recovered at start)."""
        ...

    def started(self, job: JobSeen, flow: str) -> None:
        """The job got its run slot and its flow starts."""
        ...

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        """The job's result was published (`result`: its fields, as in the file)."""
        ...


@dataclass(frozen=True)
class RouteSnapshot:
    """One route's jobs at one moment."""

    in_flight: int
    waiting: int
    """Claimed and waiting for a run slot (or for the runner), plus files in the inbox still
    settling."""
    oldest_waiting_s: float | None
    """Seconds since the oldest waiting job was dropped; None when none waits."""
    done: Mapping[str, int]
    """Results published since the service started, by status."""
    inbox_alive: bool


@dataclass(frozen=True)
class Snapshot:
    """The whole service at one moment."""

    phase: Phase
    beat_age_s: float | None
    """Seconds since the loop's last turn; None before it first turned."""
    runner_up: bool
    runner_reason: str
    """Why the runner is down; empty while up."""
    routes: Mapping[str, RouteSnapshot]

    @property
    def owner(self) -> bool:
        """Whether this service owns its folders (not a standby, not before taking them)."""
        return self.phase in ("serving", "stopping")


@dataclass
class _Route:
    waiting: dict[str, float | None] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    done: Counter[str] = field(default_factory=Counter)
    inbox_alive: bool = True
    settling: Callable[[], int] = lambda: 0


class Vitals:
    """The service's live state; see the module's docstring."""

    def __init__(self, routes: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._phase: Phase = "starting"
        self._beat: float | None = None
        self._routes: dict[str, _Route] = {name: _Route() for name in routes or []}
        self.runner_up: Callable[[], tuple[bool, str]] = lambda: (False, "not started")
        """The runner's health: (up, reason); set by the service once it has a runner."""
        self.observers: list[JobObserver] = []
        self.beat_listeners: list[Callable[[], None]] = []
        self.phase_listeners: list[Callable[[Phase], None]] = []

    # -- written by the service ------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_phase(self, phase: Phase) -> None:
        with self._lock:
            if phase == self._phase:
                return
            self._phase = phase
        for listener in self.phase_listeners:
            listener(phase)

    def beat(self) -> None:
        """One turn of the service's loop."""
        self._beat = time.monotonic()
        for listener in self.beat_listeners:
            listener()

    def watch_route(self, route: str, settling: Callable[[], int]) -> None:
        """`settling()`: how many files the route's inbox holds that are not yet claimed."""
        with self._lock:
            self._route(route).settling = settling

    def inbox_alive(self, route: str, alive: bool) -> None:
        with self._lock:
            self._route(route).inbox_alive = alive

    # -- written by a route's pipeline -----------------------------------------------------

    def received(self, job: JobSeen) -> None:
        with self._lock:
            self._route(job.route).waiting[job.claim_id] = job.dropped_at
        for observer in self.observers:
            observer.received(job)

    def started(self, job: JobSeen, flow: str) -> None:
        with self._lock:
            one = self._route(job.route)
            one.waiting.pop(job.claim_id, None)
            one.running.add(job.claim_id)
        for observer in self.observers:
            observer.started(job, flow)

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        with self._lock:
            one = self._route(job.route)
            one.waiting.pop(job.claim_id, None)
            one.running.discard(job.claim_id)
            one.done[str(result.get("status", "error"))] += 1
        for observer in self.observers:
            observer.finished(job, result)

    def forget(self, job: JobSeen) -> None:
        """The job left without a result (left claimed at a stop, or its handler failed)."""
        with self._lock:
            one = self._route(job.route)
            one.waiting.pop(job.claim_id, None)
            one.running.discard(job.claim_id)

    # -- read from any thread --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now, wall = time.monotonic(), time.time()
        up, reason = self.runner_up()
        with self._lock:
            routes = {}
            for name, one in self._routes.items():
                dropped = [at for at in one.waiting.values() if at is not None]
                routes[name] = RouteSnapshot(
                    in_flight=len(one.running),
                    waiting=len(one.waiting) + one.settling(),
                    oldest_waiting_s=max(0.0, wall - min(dropped)) if dropped else None,
                    done=dict(one.done),
                    inbox_alive=one.inbox_alive,
                )
            beat = None if self._beat is None else now - self._beat
            return Snapshot(self._phase, beat, up, reason, routes)

    def _route(self, name: str) -> _Route:
        one = self._routes.get(name)
        if one is None:
            one = self._routes[name] = _Route()
        return one

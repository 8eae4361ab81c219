"""`RunGate`: what a claimed job waits for before its flow starts. One object owns "the runner
is ready", the run slots and the stop, so a job asks one question and gets an answer, never an
exception raised by hand."""

from __future__ import annotations

import asyncio
from typing import Any

from watcher.running.contract import RunnerHealth

__all__ = ["RunGate"]


class RunGate:
    """The runner's readiness, `slots` run slots, and the service's `stop` event."""

    def __init__(self, slots: int, stop: asyncio.Event, health: RunnerHealth | None = None) -> None:
        """`health`: the runner's; jobs wait while it is down."""
        self.health = health or RunnerHealth()
        self.ready = self.health.up
        """Set while the runner can run jobs: once it has started, and not while it heals."""
        self.stop = stop
        """Set when the service stops: no flow starts after it."""
        self.waiting: set[asyncio.Task[Any] | None] = set()
        """The jobs claimed and waiting for the runner or a slot (the drain cancels them)."""
        self._slots = asyncio.Semaphore(slots)

    async def take_slot(self) -> bool:
        """Wait for a free run slot and hold it; False, holding none, when the service
        stopped meanwhile: the job is then left for the next start."""
        await self._slots.acquire()
        if self.stop.is_set():
            self._slots.release()
            return False
        return True

    def leave(self) -> None:
        """Give back the slot `take_slot` gave."""
        self._slots.release()

"""The runner contract: what every runner takes (`RunRequest`), gives (`RunOutcome`), raises
(`RunnerUnavailable`) and is (`Runner`). Every runner and the service import it; it imports no
runner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from watcher import defaults
from watcher.config.routes import DEFAULT_ROUTE

__all__ = [
    "FLOW_RUN_TAG",
    "RunOutcome",
    "RunRequest",
    "Runner",
    "RunnerHealth",
    "RunnerUnavailable",
    "stopped_message",
]

FLOW_RUN_TAG = "dropflow"
"""The tag of every flow run and deployment dropflow creates."""


@dataclass(frozen=True)
class RunRequest:
    """One job, as the runner sees it."""

    claim_id: str
    label: str
    timeout: float
    sleep: float | tuple[float, float]
    attempt: int = 1
    flow: str = defaults.WAIT_FLOW
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Checked already (`Registry.parameters`); empty for the wait flow."""
    route: str = DEFAULT_ROUTE
    """The route whose inbox the job came from."""
    deployment: str | None = None
    """`runner: deployment`: the route's `wait/<name>` (its flows' deployments); None: the
    runner's own."""
    work_queue: str | None = None
    """`runner: deployment`: the work queue of the job's flow run; None: its deployment's."""


@dataclass(frozen=True)
class RunOutcome:
    """What became of a job's run."""

    status: Literal["completed", "canceled", "error"]
    message: str
    sleep: float | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_run_url: str | None = None
    work_pool: str | None = None
    worker: str | None = None
    returned: bool = False
    """Whether `return_value` holds the flow's return value (flows other than wait)."""
    return_value: Any = None
    return_note: str | None = None
    """Why a flow that returned has no `return_value` in its result (not JSON, too large)."""


class RunnerUnavailable(Exception):
    """The runner cannot run jobs just now (the Prefect API is unreachable); try again later."""


class RunnerHealth:
    """Whether the runner can run jobs now. The runner marks it; the service's jobs wait on
    `up` before they run, so a job never spends an attempt, or gets an error, while what the
    runner needs (the embedded Prefect server, its PostgreSQL) is being healed.

    Used from the service's event loop only.
    """

    def __init__(self) -> None:
        self.up = asyncio.Event()
        """Set while the runner can run jobs."""
        self.reason = "starting"
        """Why it is down (empty while up)."""
        self.down_since: float | None = time.time()
        """When it went down (wall clock), None while up."""
        self.listeners: list[Callable[[RunnerHealth], None]] = []
        """Called after each change (the service records it for `dropflow status`)."""
        self._changed = asyncio.Event()

    def mark_up(self) -> None:
        if self.up.is_set():
            return
        self.reason, self.down_since = "", None
        self.up.set()
        self._change()

    def mark_down(self, reason: str) -> None:
        if not self.up.is_set() and self.reason == reason:
            return
        if self.up.is_set():
            self.down_since = time.time()
        self.reason = reason
        self.up.clear()
        self._change()

    async def changed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the next change; whether one came."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _change(self) -> None:
        # Wake every waiter once, then arm the event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            listener(self)


class Runner(Protocol):
    """Turns run requests into outcomes."""

    health: RunnerHealth
    """Set up by the runner; marked up by `start` at the latest."""

    async def start(self) -> str:
        """Get ready (connect, warm up); return a one-line description for the log."""
        ...

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one job to its outcome; raise `RunnerUnavailable` to have it retried."""
        ...

    async def close(self) -> None:
        """Release what `start` set up; called once no job is running."""
        ...


def stopped_message(flow: str, timeout: float) -> str:
    """The result message of a registered flow other than wait stopped at its timeout."""
    return f"Stopped at the timeout: flow '{flow}' ran longer than {timeout:g}s."

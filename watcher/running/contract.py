"""The runner contract: what every runner takes (`RunRequest`), gives (`RunOutcome`), raises
(`RunnerUnavailable`) and is (`Runner`). Every runner and the service import it; it imports no
runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from watcher import defaults

__all__ = [
    "FLOW_RUN_TAG",
    "RunOutcome",
    "RunRequest",
    "Runner",
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


class Runner(Protocol):
    """Turns run requests into outcomes."""

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

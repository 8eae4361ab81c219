"""`verdict`: what a flow run in flight calls for, from plain data and this machine's clock.

One rule for both ways the runner learns a run's state: the events (which runs may be due, to
read) and the reads (what to do with the run read). No Prefect, no client: seconds and names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FINAL", "Limits", "RunView", "Verdict", "verdict"]

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
"""Prefect's final state types."""

Verdict = Literal["wait", "final", "not_started", "lost", "timed_out"]
"""`wait`: nothing to do yet. `final`: the run ended; its state says how. `not_started`: no
worker took it within `start_timeout` (cancel it). `timed_out`: running for its timeout, by a
flow that does not stop itself (cancel it). `lost`: running past its timeout plus the margin,
or pending past the pending limit, with no final state: its worker is taken as lost (mark it
Crashed, run it again)."""


@dataclass(frozen=True)
class Limits:
    """The runner's deadlines, in seconds."""

    start_timeout: float | None
    """A run may wait this long for a worker (from its creation); None waits for ever."""
    lost_run_margin: float
    """A run still running (or cancelling) this long past its timeout is lost."""
    pending_limit: float
    """A run still pending (a worker took it, the flow has not started) this long is lost."""


@dataclass(frozen=True)
class RunView:
    """What the runner knows of one flow run, on this machine's monotonic clock."""

    state: str | None
    """The state type (`SCHEDULED`, `PENDING`, `RUNNING`, ...), None if not known yet."""
    since: float
    """When the run was first seen in `state`."""
    created: float
    """When the runner created (or found again) the run."""
    timeout: float
    """The job's timeout."""
    start_timeout: bool = True
    """Whether `Limits.start_timeout` still applies (not once a worker took the run late)."""
    stop_at_timeout: bool = False
    """The flow does not end itself at its timeout (any flow but wait): the runner cancels it,
    counting from when the run was seen running."""


def verdict(run: RunView, now: float, limits: Limits) -> Verdict:
    """What `run` calls for at `now`."""
    if run.state in FINAL:
        return "final"
    if run.state == "SCHEDULED":
        if (
            run.start_timeout
            and limits.start_timeout is not None
            and now - run.created > limits.start_timeout
        ):
            return "not_started"
        return "wait"
    if run.state == "RUNNING" and run.stop_at_timeout:
        # Never early whatever the server's clock says: counted here from the running state.
        return "timed_out" if now - run.since >= run.timeout else "wait"
    if run.state in ("RUNNING", "CANCELLING"):
        if now - run.since > run.timeout + limits.lost_run_margin:
            return "lost"
        return "wait"
    if run.state == "PENDING" and now - run.since > limits.pending_limit:
        return "lost"
    return "wait"

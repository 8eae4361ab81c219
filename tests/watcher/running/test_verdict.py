"""`verdict`: what a flow run in flight calls for, without any server: seconds and names."""

from __future__ import annotations

import pytest

from watcher.running.deployment.runner import PENDING_LIMIT
from watcher.running.deployment.verdict import Limits, RunView, verdict

LIMITS = Limits(start_timeout=10.0, lost_run_margin=5.0, pending_limit=PENDING_LIMIT)


def _run(
    state: str | None,
    *,
    since: float = 100.0,
    start_timeout: bool = True,
    stop_at_timeout: bool = False,
) -> RunView:
    """A run created at 100 s with a 20 s timeout, in `state` since `since`."""
    return RunView(state, since, 100.0, 20.0, start_timeout, stop_at_timeout)


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"])
def test_a_final_state_is_done_at_once(state: str) -> None:
    assert verdict(_run(state), 100.0, LIMITS) == "final"
    assert verdict(_run(state, stop_at_timeout=True), 1e9, LIMITS) == "final"


def test_a_run_no_worker_took_is_never_started_past_the_start_timeout() -> None:
    run = _run("SCHEDULED", since=105.0)  # counted from creation, not from the state
    assert verdict(run, 110.0, LIMITS) == "wait"  # exactly at the limit: not yet
    assert verdict(run, 110.5, LIMITS) == "not_started"


def test_without_a_start_timeout_or_once_taken_late_a_scheduled_run_waits() -> None:
    forever = Limits(start_timeout=None, lost_run_margin=5.0, pending_limit=PENDING_LIMIT)
    assert verdict(_run("SCHEDULED"), 1e9, forever) == "wait"
    assert verdict(_run("SCHEDULED", start_timeout=False), 1e9, LIMITS) == "wait"


def test_a_flow_that_does_not_stop_itself_is_cancelled_at_its_timeout() -> None:
    run = _run("RUNNING", stop_at_timeout=True)
    assert verdict(run, 119.5, LIMITS) == "wait"
    assert verdict(run, 120.0, LIMITS) == "timed_out"  # exactly at the timeout: due


def test_a_running_run_past_timeout_and_margin_is_lost() -> None:
    for state in ("RUNNING", "CANCELLING"):
        run = _run(state)
        assert verdict(run, 125.0, LIMITS) == "wait", state  # exactly timeout + margin
        assert verdict(run, 125.5, LIMITS) == "lost", state


def test_a_cancelling_run_of_a_flow_stopped_by_the_runner_is_lost_past_the_margin() -> None:
    run = _run("CANCELLING", stop_at_timeout=True)
    assert verdict(run, 121.0, LIMITS) == "wait"
    assert verdict(run, 125.5, LIMITS) == "lost"


def test_a_run_pending_too_long_lost_its_worker() -> None:
    run = _run("PENDING")
    assert verdict(run, 100.0 + PENDING_LIMIT, LIMITS) == "wait"  # exactly at the limit
    assert verdict(run, 100.0 + PENDING_LIMIT + 0.5, LIMITS) == "lost"


@pytest.mark.parametrize("state", [None, "PAUSED"])
def test_other_states_keep_waiting(state: str | None) -> None:
    assert verdict(_run(state), 1e9, LIMITS) == "wait"

"""The in-process runner's verdict on a run the embedded server's restart cut, against the
shared Prefect server; the boundary is the wait flow (the state the engine hands back)."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.states import Completed

from watcher.running.contract import RunnerUnavailable, RunRequest
from watcher.running.in_process import PrefectRunner

pytestmark = pytest.mark.anyio


class _Supervisor:
    """What the runner reads of its supervisor: the restarts so far, and a healthy server."""

    restarts = 0

    def problem(self) -> str | None:
        return None

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("restarted", [True, False], ids=["restart during the run", "none"])
async def test_a_state_without_its_data_runs_again_only_after_a_restart(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, restarted: bool
) -> None:
    runner = PrefectRunner()
    await runner.start()
    supervisor = _Supervisor()
    runner._supervisor = supervisor  # type: ignore[assignment]
    runner.health.mark_up()

    async def wait(**kwargs: Any) -> Any:
        if restarted:
            supervisor.restarts += 1
        # What the engine hands back once it read the run's state from the API after a
        # restart: Completed, its data gone (results are not persisted).
        return Completed()

    monkeypatch.setattr("flows.wait.wait", wait)
    request = RunRequest("claim", "job", timeout=5, sleep=0)
    try:
        if restarted:
            with pytest.raises(RunnerUnavailable):
                await runner.run(request)
        else:
            outcome = await runner.run(request)
            assert outcome.status == "error" and "ended in Completed" in outcome.message
    finally:
        await runner.close()

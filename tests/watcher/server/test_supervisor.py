"""The supervisor's decisions, with the server process as the boundary: a fake
`EmbeddedServer` whose checks and restarts say what a real one would."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from watcher.server.embedded import EmbeddedOptions, EmbeddedServer, EmbeddedServerError
from watcher.server.supervisor import Supervisor


class _Server(EmbeddedServer):
    """Fails its checks as told; each restart pops the next outcome."""

    def __init__(self, tmp_path: Path, restarts: list[BaseException | None]) -> None:
        super().__init__(EmbeddedOptions(1, tmp_path, False, 0), {})
        self.problems: list[str | None] = []
        self.outcomes = restarts
        self.restarted = 0

    def problem(self, timeout: float = 5.0) -> str | None:
        return self.problems.pop(0) if self.problems else None

    def restart(self) -> str:
        self.restarted += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return self.url

    @property
    def owns_cluster(self) -> bool:
        return False


def test_repeated_failures_back_off_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the boundary: time itself
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("watcher.server.supervisor.asyncio.sleep", sleep)
    failure = EmbeddedServerError("the embedded Prefect server exited with status 3")
    server = _Server(tmp_path, [failure, failure, failure, None])
    downs: list[str] = []
    ups: list[bool] = []

    async def up() -> None:
        ups.append(True)

    supervisor = Supervisor(server, on_down=downs.append, on_up=up)
    caplog.set_level(logging.WARNING)
    asyncio.run(supervisor.heal("the embedded Prefect server exited (killed by SIGKILL)"))
    assert server.restarted == 4 and supervisor.restarts == 1 and ups == [True]
    # Crashed right after its start: 1 s; then each failed start doubles the wait.
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert downs[0] == "the embedded Prefect server exited (killed by SIGKILL)"
    assert caplog.text.count("did not start again") == 3
    assert "failed 4 time(s) in a row; restarting it in 8s" in caplog.text


def test_a_slow_answer_alone_is_looked_at_again_before_a_restart(tmp_path: Path) -> None:
    asyncio.run(_slow_answer(tmp_path))


async def _slow_answer(tmp_path: Path) -> None:
    server = _Server(tmp_path, [None])
    server.problems = ["the Prefect API does not answer (timed out)", None]
    supervisor = Supervisor(server, on_down=lambda reason: None, on_up=_nothing, check_interval=0)
    watching = asyncio.create_task(supervisor.watch())
    while server.problems:
        await asyncio.sleep(0)
    watching.cancel()
    assert server.restarted == 0
    server.problems = ["the embedded Prefect server exited (status 1)"]
    watching = asyncio.create_task(supervisor.watch())
    while not server.restarted:
        await asyncio.sleep(0.01)
    watching.cancel()


async def _nothing() -> None:
    return None

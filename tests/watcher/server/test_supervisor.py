"""The supervisor's decisions, with the server process as the boundary: a fake
`EmbeddedServer` whose checks and restarts say what a real one would."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

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


class _Supervisor(Supervisor):
    """Records its waits instead of waiting (the boundary: time itself)."""

    def __init__(self, server: EmbeddedServer, **kw: Any) -> None:
        super().__init__(server, **kw)
        self.waits: list[float] = []

    def _pause(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self._stopping.is_set()


def test_repeated_failures_back_off_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failure = EmbeddedServerError("the embedded Prefect server exited with status 3")
    server = _Server(tmp_path, [failure, failure, failure, None])
    downs: list[str] = []
    ups: list[bool] = []
    supervisor = _Supervisor(server, on_down=downs.append, on_up=lambda: ups.append(True))
    caplog.set_level(logging.WARNING)
    supervisor.heal("the embedded Prefect server exited (killed by SIGKILL)")
    assert server.restarted == 4 and supervisor.restarts == 1 and ups == [True]
    # Crashed right after its start: 1 s; then each failed start doubles the wait.
    assert supervisor.waits == [1.0, 2.0, 4.0, 8.0]
    assert downs[0] == "the embedded Prefect server exited (killed by SIGKILL)"
    assert caplog.text.count("did not start again") == 3
    assert "failed 4 time(s) in a row; restarting it in 8s" in caplog.text


def test_a_slow_answer_alone_is_looked_at_again_before_a_restart(tmp_path: Path) -> None:
    server = _Server(tmp_path, [None])
    slow = "the Prefect API does not answer (timed out)"
    server.problems = [slow, slow, None]
    supervisor = _Supervisor(server, on_down=lambda reason: None, on_up=lambda: None)
    supervisor._last_start = float("-inf")  # long up: a restart comes without waiting
    supervisor._pause = lambda seconds: not server.problems  # type: ignore[method-assign]
    supervisor.watch()  # two slow answers in a row, then fine: no restart
    assert server.restarted == 0
    server.problems = [slow] * 3
    supervisor.watch()  # the third slow answer in a row: restarted
    assert server.restarted == 1


def test_a_stop_ends_the_watch_and_gives_up_a_restart_in_progress(tmp_path: Path) -> None:
    server = _Server(tmp_path, [])
    server.problems = ["the embedded Prefect server exited (status 1)"]
    restarting = threading.Event()
    release = threading.Event()

    def restart() -> str:  # a start that takes until the server is told to stop
        restarting.set()
        release.wait(30)
        raise EmbeddedServerError("the embedded Prefect server's start was given up")

    server.restart = restart  # type: ignore[method-assign]
    server.stop = release.set  # type: ignore[method-assign]
    supervisor = Supervisor(server, on_down=lambda reason: None, on_up=lambda: None)
    supervisor._interval = 0.01
    supervisor.start()
    assert restarting.wait(30)
    supervisor.stop()  # returns only once the watch thread has ended
    assert release.is_set() and supervisor.restarts == 0

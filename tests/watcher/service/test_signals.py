"""`StopSignals.capture` in-process: real signals raised at this very process."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from watcher.service.signals import StopSignals


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    # The service's logger may not propagate (the CLI sets it up so): listen on it directly.
    logger = logging.getLogger("watcher.service.loop")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("name", ["SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_an_ignored_signal_is_logged_and_changes_nothing(name: str, lines: list[str]) -> None:
    signum = getattr(signal, name, None)
    if signum is None:
        pytest.skip(f"no {name} on this platform")
    # Outside `capture`, this handler gets the signal (not the default, which would kill the
    # test run): `capture` must replace it, then put it back.
    escaped: list[int] = []

    def outside(signum: int, frame: FrameType | None) -> None:
        escaped.append(signum)

    original = signal.signal(signum, outside)
    try:
        woken: list[bool] = []
        stops = StopSignals(wake=lambda: woken.append(True))
        with stops.capture():
            signal.raise_signal(signum)
            signal.raise_signal(signum)
        assert escaped == []
        assert signal.getsignal(signum) is outside
    finally:
        signal.signal(signum, original)
    assert [line.split(" (")[0] for line in lines] == [f"received {name}: ignored"] * 2
    if name == "SIGHUP":
        assert lines[0].endswith(
            "(dropflow does not reload its config; restart it to apply changes)"
        )
    assert (stops.count, stops.forced, stops.stopping.is_set(), woken) == (0, False, False, [])


def test_sigterm_is_still_a_stop_request(lines: list[str]) -> None:
    stops = StopSignals(wake=lambda: None)
    with stops.capture():
        signal.raise_signal(signal.SIGTERM)
    assert stops.count == 1 and stops.stopping.is_set() and not stops.forced
    assert lines == ["received SIGTERM"]

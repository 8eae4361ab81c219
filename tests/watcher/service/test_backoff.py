"""`ClaimBackoff` on a clock of its own: when claims are tried again, and what is logged."""

from __future__ import annotations

import errno

from watcher.service.backoff import ClaimBackoff


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _error(code: int) -> OSError:
    return OSError(code, "failing")


def test_an_error_is_reported_once_and_waited_out_longer_each_round() -> None:
    clock = _Clock()
    backoff = ClaimBackoff(1.0, 8.0, clock)
    assert backoff.wait() == 0
    assert backoff.failed(_error(errno.EXDEV)) is True
    assert backoff.wait() == 1.0
    # The other files of the same round: nothing new to say, no longer wait.
    assert backoff.failed(_error(errno.EXDEV)) is False
    assert backoff.wait() == 1.0
    waits = []
    for _ in range(5):
        clock.now += backoff.wait()
        assert backoff.failed(_error(errno.EXDEV)) is False
        waits.append(backoff.wait())
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.failures == 6


def test_a_new_error_is_reported_and_starts_over() -> None:
    clock = _Clock()
    backoff = ClaimBackoff(1.0, 8.0, clock)
    backoff.failed(_error(errno.EXDEV))
    clock.now += 1.0
    backoff.failed(_error(errno.EXDEV))
    assert backoff.wait() == 2.0
    assert backoff.failed(_error(errno.ENOSPC)) is True  # even within the round
    assert backoff.wait() == 1.0 and backoff.failures == 1


def test_claims_that_work_again_say_after_how_many_failed_rounds() -> None:
    clock = _Clock()
    backoff = ClaimBackoff(1.0, 8.0, clock)
    assert backoff.worked() == 0  # nothing was failing: nothing to say
    backoff.failed(_error(errno.ENOSPC))
    clock.now += 1.0
    backoff.failed(_error(errno.ENOSPC))
    clock.now += 2.0
    assert backoff.worked() == 2
    assert backoff.wait() == 0 and backoff.error is None
    assert backoff.failed(_error(errno.ENOSPC)) is True  # a fresh failure is news again
    assert backoff.wait() == 1.0

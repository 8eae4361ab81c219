"""The wait flow's work and its words, without Prefect: a runner that does not use Prefect (the
`direct` runner) imports this module alone."""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["Outcome", "draw_sleep", "outcome_message"]

Outcome = Literal["completed", "canceled"]


def draw_sleep(sleep: float | tuple[float, float], rng: random.Random | None = None) -> float:
    """Return the seconds of work: `sleep` itself, or a uniform draw from `[min, max]`."""
    if isinstance(sleep, tuple | list):
        low, high = sleep
        return round((rng or random).uniform(low, high), 3)
    return float(sleep)


def outcome_message(outcome: Outcome, seconds: float, timeout: float) -> str:
    """The sentence a result gives for an outcome of the wait."""
    if outcome == "completed":
        return f"The work ({seconds:g} s) finished within the {timeout:g} s timeout."
    return f"Canceled: the work ({seconds:g} s) ran past the {timeout:g} s timeout."

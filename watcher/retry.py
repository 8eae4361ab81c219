"""Retry an awaitable with doubling delays: the one backoff loop of the service and its runners.

Hand-written rather than `tenacity` or `stamina`: every caller needs the same four things
(which exceptions mean "try again", a first and a largest delay, a log line before each wait),
and most want no retry limit, since a job must wait for Prefect or the disk for as long as it
takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["retry"]

T = TypeVar("T")


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    first: float,
    most: float,
    before_wait: Callable[[BaseException, float], None],
    tries: int | None = None,
) -> T:
    """Await `call()` until it returns, and return that.

    Args:
        call: Makes a fresh awaitable for each try.
        on: The exceptions that mean "try again"; any other propagates at once.
        first: Seconds to wait after the first failure; each later wait doubles, up to `most`.
        most: The longest wait, in seconds.
        before_wait: Called with the exception and the coming wait before each wait (to log).
        tries: At most this many calls; the last one's exception propagates. None: no limit.
    """
    delay = first
    tried = 0
    while True:
        tried += 1
        try:
            return await call()
        except on as exc:
            if tries is not None and tried >= tries:
                raise
            before_wait(exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, most)

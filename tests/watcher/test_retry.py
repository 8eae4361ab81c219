from __future__ import annotations

import asyncio

import pytest

from watcher import retry as retry_module
from watcher.retry import retry


def test_waits_double_up_to_the_largest_and_the_value_is_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    logged: list[tuple[str, float]] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry_module.asyncio, "sleep", no_wait)
    tries = iter([OSError("one"), OSError("two"), OSError("three"), OSError("four"), None])

    async def call() -> str:
        problem = next(tries)
        if problem is not None:
            raise problem
        return "done"

    result = asyncio.run(
        retry(
            call,
            on=OSError,
            first=1.0,
            most=3.0,
            before_wait=lambda exc, delay: logged.append((str(exc), delay)),
        )
    )
    assert result == "done"
    assert waits == [1.0, 2.0, 3.0, 3.0]
    assert logged == [("one", 1.0), ("two", 2.0), ("three", 3.0), ("four", 3.0)]


def test_an_exception_not_named_propagates_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a retry")

    with pytest.raises(ValueError, match="not a retry"):
        asyncio.run(retry(call, on=OSError, first=0.0, most=0.0, before_wait=lambda e, d: None))
    assert calls == 1


def test_with_a_limit_the_last_tries_exception_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry_module.asyncio, "sleep", no_wait)
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise OSError(f"try {calls}")

    with pytest.raises(OSError, match="try 4"):
        asyncio.run(
            retry(call, on=OSError, first=1.0, most=8.0, before_wait=lambda e, d: None, tries=4)
        )
    assert calls == 4
    assert waits == [1.0, 2.0, 4.0]

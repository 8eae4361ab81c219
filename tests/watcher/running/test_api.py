"""Which errors make a job wait for the Prefect API instead of failing."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from watcher.running.api import unreachable


def _refused() -> httpx.ConnectError:
    """A real httpx connection error: a request to a port nobody listens on."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nobody listens there now

    async def call() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/api/health")

    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(call())
    return caught.value


def test_a_refused_connection_is_unreachable_however_it_is_wrapped() -> None:
    refused = _refused()
    assert unreachable(refused)
    # As Prefect's engine may hand it on: raised from, raised while handling, in a group.
    try:
        raise RuntimeError("Failed to reach API") from refused
    except RuntimeError as exc:
        assert unreachable(exc)
    try:
        try:
            raise refused
        except httpx.ConnectError:
            raise ValueError("while handling it") from None
    except ValueError as exc:
        exc.__context__ = refused
        assert unreachable(exc)
    assert unreachable(ExceptionGroup("engine", [ValueError("x"), refused]))
    assert unreachable(ConnectionRefusedError(111, "Connection refused"))


def test_other_errors_are_not_unreachable() -> None:
    assert not unreachable(ValueError("a bug"))
    assert not unreachable(RuntimeError("boom"))
    looped = ValueError("loop")
    looped.__context__ = RuntimeError("inner")
    looped.__context__.__context__ = looped  # a cycle ends the walk
    assert not unreachable(looped)

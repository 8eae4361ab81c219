"""When the Prefect API counts as unavailable, which makes a job wait and retry instead of
failing (`RunnerUnavailable`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from watcher.running.contract import RunnerUnavailable

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

__all__ = ["api_down", "overloaded", "unavailable"]


def overloaded(exc: Exception) -> bool:
    """An API answer that means "not now" (Prefect's own client retries these first)."""
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in (
        429,
        502,
        503,
        504,
    )


async def api_down(client: PrefectClient | None = None) -> bool:
    """Whether the API fails its health check, asked through `client` or a client of its own."""
    from prefect.client.orchestration import get_client

    try:
        if client is not None:
            return await client.api_healthcheck() is not None
        async with get_client() as own:
            return await own.api_healthcheck() is not None
    except Exception:
        return True


def unavailable(cause: object) -> RunnerUnavailable:
    """The error that has a job wait and retry: `Prefect API unavailable (<cause>)`."""
    return RunnerUnavailable(f"Prefect API unavailable ({cause})")

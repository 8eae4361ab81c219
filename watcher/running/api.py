"""When the Prefect API counts as unavailable, which makes a job wait and retry instead of
failing (`RunnerUnavailable`)."""

from __future__ import annotations

__all__ = ["overloaded"]


def overloaded(exc: Exception) -> bool:
    """An API answer that means "not now" (Prefect's own client retries these first)."""
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in (
        429,
        502,
        503,
        504,
    )

"""The Prefect state writes of `DeploymentRunner`, one place: each takes the client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watcher.running.api import api_down, unavailable

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = ["cancel", "cancel_unstarted", "mark_crashed"]


async def cancel(client: PrefectClient, flow_run: FlowRun, message: str) -> None:
    """Ask Prefect to cancel a run: its worker then stops the run's process."""
    from prefect.states import Cancelling

    state: Any = Cancelling(message=message)
    try:
        await client.set_flow_run_state(flow_run.id, state, force=True)
    except Exception as exc:
        if await api_down(client):
            raise unavailable(repr(exc)) from exc
        raise


async def cancel_unstarted(client: PrefectClient, flow_run: FlowRun, start_timeout: float) -> bool:
    """Cancel a run no worker took in time; False if a worker took it meanwhile."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Cancelled

    state: Any = Cancelled(message=f"dropflow: no worker started it within {start_timeout:g} s")
    result = await client.set_flow_run_state(flow_run.id, state)
    return bool(result.status == SetStateStatus.ACCEPT)


async def mark_crashed(client: PrefectClient, flow_run: FlowRun, lost_run_margin: float) -> FlowRun:
    """Mark a run lost with its worker Crashed; the run as it is now."""
    from prefect.states import Crashed

    state: Any = Crashed(
        message=f"dropflow: no final state {lost_run_margin:g} s past its timeout; "
        "its worker is taken as lost"
    )
    await client.set_flow_run_state(flow_run.id, state, force=True)
    return flow_run.model_copy(update={"state": state})

"""`prefect worker start --pool POOL --type dropflow`: a Prefect worker that runs each flow run
in its own event loop, instead of a new Python process per run as the process worker does.

A process worker pays for a Python process per flow run, imports included: about 3.5 s of CPU
on this project's 2-core machine (bench W4), for a wait flow that itself costs a fraction of a
second. This worker loads the deployment's flow (the module is imported once, then cached) and
runs it with Prefect's own engine in its event loop, up to `--limit` runs at once, the way
`runner: prefect` runs flows in the watcher. What that gives up:

- Flow runs share the worker's process: a flow that blocks the event loop stalls the others,
  and a crash of the process takes every run in it along; the watcher then finds them lost with
  their worker (`lost_run_margin`) and runs them again elsewhere, as when a machine dies.
- Async flows only (the wait flow is one).
- Cancelling a running flow run from the UI is not supported (no process to kill).

Prefect finds the type through the `prefect.collections` entry point in pyproject.toml. A worker
started with `--type dropflow` on a missing pool creates it with this type.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import anyio.abc
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

from watcher import prefect_internals as internals

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

__all__ = ["IN_PROCESS_POOL_TYPE", "InProcessWorker"]

logger = logging.getLogger(__name__)

IN_PROCESS_POOL_TYPE = "dropflow"
"""The work pool type of `InProcessWorker` (`prefect worker start --type dropflow`)."""


class InProcessJobConfiguration(BaseJobConfiguration):
    """Nothing beyond Prefect's base job configuration: there is no infrastructure to set up."""


class InProcessVariables(BaseVariables):
    """Nothing beyond Prefect's base variables."""


class InProcessWorkerResult(BaseWorkerResult):
    """The flow run ended in the worker's process (status 0), or could not start there."""


class InProcessWorker(
    BaseWorker[InProcessJobConfiguration, InProcessVariables, InProcessWorkerResult]
):
    """Runs each flow run of its work pool in the worker's own event loop."""

    type = IN_PROCESS_POOL_TYPE
    job_configuration = InProcessJobConfiguration
    job_configuration_variables = InProcessVariables
    _description = (
        "dropflow's worker: runs async flow runs in the worker's own event loop, without a "
        "new Python process per run."
    )
    _display_name = "dropflow (in-process)"

    async def run(
        self,
        flow_run: FlowRun,
        configuration: InProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> InProcessWorkerResult:
        flow = await internals.load_deployed_flow(flow_run)
        if task_status is not None:
            task_status.started(os.getpid())
        state: Any = await internals.run_flow_run_here(flow, flow_run)
        logger.debug("flow run %s ended %s", flow_run.name, getattr(state, "name", state))
        return InProcessWorkerResult(identifier=str(os.getpid()), status_code=0)

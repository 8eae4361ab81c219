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

It also asks for scheduled runs as soon as one of its runs ends, not only every
`PREFECT_WORKER_QUERY_SECONDS`: Prefect's worker leaves a freed slot empty until its next poll,
on average half that interval, which for short jobs costs more than the run itself.

Prefect finds the type through the `prefect.collections` entry point in pyproject.toml. A worker
started with `--type dropflow` on a missing pool creates it with this type.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from watcher.server import prefect_internals as internals

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

    _run_ended: asyncio.Event | None = None
    _asker: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        await super().setup()
        self._run_ended = asyncio.Event()
        self._asker = asyncio.get_running_loop().create_task(self._ask_when_a_run_ends())

    async def teardown(self, *exc_info: Any) -> None:
        if self._asker is not None:
            self._asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asker
            self._asker = None
        await super().teardown(*exc_info)

    async def _ask_when_a_run_ends(self) -> None:
        """Ask for scheduled runs each time a run of this worker ended; ends coalesce.

        Prefect's worker frees a run's slot as soon as `run` returns, before it next yields
        to the event loop, so this asks with the slot already free (tests/watcher/
        test_worker.py checks that a freed slot is filled without waiting for the poll).
        Prefect's own poll goes on: a run is never submitted twice, since the worker skips the
        runs it is submitting and the server lets one worker move a run to Pending.
        """
        assert self._run_ended is not None
        while True:
            await self._run_ended.wait()
            self._run_ended.clear()
            try:
                await self.get_and_submit_flow_runs()
            except Exception as exc:  # the next poll or end asks again
                logger.warning("could not ask for scheduled flow runs: %s", exc)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: InProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> InProcessWorkerResult:
        flow = await internals.load_deployed_flow(flow_run)
        if task_status is not None:
            task_status.started(os.getpid())
        try:
            state: Any = await internals.run_flow_run_here(flow, flow_run)
        finally:
            if self._run_ended is not None:
                self._run_ended.set()
        logger.debug("flow run %s ended %s", flow_run.name, getattr(state, "name", state))
        return InProcessWorkerResult(identifier=str(os.getpid()), status_code=0)

"""`dropflow deploy`: the work pool and the wait flow's deployment that `runner: deployment` uses.

The deployment's entrypoint is the module path `flows.wait.wait`, not a file path: any machine
with dropflow installed can run it, wherever its checkout lives. Deploying is idempotent: the
pool is created only if missing (an existing pool, its concurrency limit included, is left as
it is), and the deployment is an upsert of the same name with the same values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["DEPLOYMENT_TAG", "Deployed", "deploy"]

logger = logging.getLogger(__name__)

DEPLOYMENT_TAG = "dropflow"
"""The tag of the deployment and of every flow run dropflow creates."""


@dataclass(frozen=True)
class Deployed:
    """What `deploy` found or made."""

    work_pool: str
    pool_created: bool
    deployment: str
    deployment_id: str
    entrypoint: str


async def deploy(work_pool: str, deployment: str) -> Deployed:
    """Create the process work pool `work_pool` if missing, and register the wait flow as
    `deployment` (`wait/<name>`) on it, against the Prefect API of the current settings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from flows.wait import wait
    from watcher.prefect_internals import (
        PROCESS_POOL_TYPE,
        module_entrypoint_type,
        process_pool_template,
    )
    from watcher.worker import IN_PROCESS_POOL_TYPE

    flow_name, _, name = deployment.partition("/")
    if flow_name != wait.name:
        raise ValueError(f"deployment {deployment!r} is not a deployment of the {wait.name} flow")
    created = False
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(work_pool)
            if pool.type not in (PROCESS_POOL_TYPE, IN_PROCESS_POOL_TYPE):
                logger.warning(
                    "work pool %r exists with type %r, not %r or %r: its workers must be able "
                    "to run the module entrypoint",
                    work_pool,
                    pool.type,
                    PROCESS_POOL_TYPE,
                    IN_PROCESS_POOL_TYPE,
                )
        except ObjectNotFound:
            try:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=work_pool,
                        type=PROCESS_POOL_TYPE,
                        base_job_template=process_pool_template(),
                    )
                )
                created = True
            except ObjectAlreadyExists:  # another `deploy` made it meanwhile
                pass
        runner_deployment = RunnerDeployment.from_flow(
            wait,
            name=name,
            work_pool_name=work_pool,
            entrypoint_type=module_entrypoint_type(),
            tags=[DEPLOYMENT_TAG],
            description="dropflow's wait flow: one flow run per job file (see dropflow's README).",
        )
        deployment_id = await runner_deployment.aapply()
    return Deployed(
        work_pool=work_pool,
        pool_created=created,
        deployment=deployment,
        deployment_id=str(deployment_id),
        entrypoint=str(runner_deployment.entrypoint),
    )

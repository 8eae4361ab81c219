"""`dropflow deploy`: the work pool, and one deployment per registered flow, that
`runner: deployment` uses.

The wait flow's entrypoint is the module path `flows.wait.wait`, not a file path: any machine
with dropflow installed can run it, wherever its checkout lives. A flow registered by module
path is deployed the same way; one registered by file gets that file's absolute path, which
must then be the same on the workers' machines. Deploying is idempotent: the pool is created
only if missing (an existing pool, its concurrency limit included, is left as it is), and each
deployment is an upsert of the same name with the same values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from watcher.config.registry import RegisteredFlow
from watcher.running.contract import FLOW_RUN_TAG

__all__ = ["Deployed", "DeployedFlow", "deploy", "deployment_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployedFlow:
    """One deployment `deploy` registered."""

    flow: str
    deployment: str
    deployment_id: str
    entrypoint: str


@dataclass(frozen=True)
class Deployed:
    """What `deploy` found or made."""

    work_pool: str
    pool_created: bool
    deployments: tuple[DeployedFlow, ...]


def deployment_name(flow: RegisteredFlow, deployment: str) -> str:
    """The deployment of a registered flow: `<its Prefect name>/<the name in deployment>`,
    where the config's `deployment` (`wait/<name>`) names the wait flow's."""
    return f"{flow.prefect_name}/{deployment.partition('/')[2]}"


async def deploy(
    work_pool: str, deployment: str, flows: Sequence[RegisteredFlow] | None = None
) -> Deployed:
    """Create the process work pool `work_pool` if missing, and register each of `flows`
    (default: only wait) on it as `<flow>/<name>`, `deployment` being the wait flow's
    `wait/<name>`, against the Prefect API of the current settings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from flows.wait import wait
    from watcher.config.registry import Registry, split_entrypoint
    from watcher.running.worker import IN_PROCESS_POOL_TYPE
    from watcher.server.prefect_internals import (
        PROCESS_POOL_TYPE,
        file_entrypoint_type,
        module_entrypoint_type,
        process_pool_template,
    )

    flow_name, _, name = deployment.partition("/")
    if flow_name != wait.name:
        raise ValueError(f"deployment {deployment!r} is not a deployment of the {wait.name} flow")
    if flows is None:
        only_wait = Registry.default()
        only_wait.load()
        flows = list(only_wait.loaded_flows())
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
        done = []
        for flow in flows:
            where, function, by_file = split_entrypoint(flow.entrypoint)
            runner_deployment = RunnerDeployment.from_flow(
                flow.flow,
                name=name,
                work_pool_name=work_pool,
                entrypoint_type=file_entrypoint_type() if by_file else module_entrypoint_type(),
                tags=[FLOW_RUN_TAG],
                description=(
                    f"dropflow's {flow.name} flow: one flow run per job file (see dropflow's "
                    "README)."
                ),
            )
            if by_file:
                # Prefect makes a file entrypoint relative to the current folder: a worker,
                # started anywhere, needs it absolute.
                runner_deployment.entrypoint = f"{Path(where).resolve()}:{function}"
            deployment_id = await runner_deployment.aapply()
            done.append(
                DeployedFlow(
                    flow=flow.name,
                    deployment=deployment_name(flow, deployment),
                    deployment_id=str(deployment_id),
                    entrypoint=str(runner_deployment.entrypoint),
                )
            )
    return Deployed(work_pool=work_pool, pool_created=created, deployments=tuple(done))

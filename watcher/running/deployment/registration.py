"""`dropflow deploy`: the work pool, and one deployment per registered flow, that
`runner: deployment` uses.

The wait flow's entrypoint is the module path `flows.wait.wait`, not a file path: any machine
with dropflow installed can run it, wherever its checkout lives. A flow registered by module
path is deployed the same way; one registered by file gets that file's absolute path, which
must then be the same on the workers' machines. Deploying is idempotent: the pool is created
only if missing (an existing pool, its concurrency limit included, is left as it is), and each
deployment is an upsert of the same name with the same values.

Routes (`runner: deployment`) may name their own `deployment` (registered like the top-level
one, for every flow) and a `work_queue`: each queue the routes use gets a Prefect priority from
theirs (`queue_priorities`), created or set on every deploy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from watcher.config.registry import RegisteredFlow
from watcher.config.routes import Route
from watcher.running.contract import FLOW_RUN_TAG

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

__all__ = [
    "Deployed",
    "DeployedFlow",
    "DeployedQueue",
    "deploy",
    "deployment_name",
    "queue_priorities",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployedFlow:
    """One deployment `deploy` registered."""

    flow: str
    deployment: str
    deployment_id: str
    entrypoint: str


@dataclass(frozen=True)
class DeployedQueue:
    """One work queue of the routes, as `deploy` left it."""

    name: str
    priority: int
    change: Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Deployed:
    """What `deploy` found or made."""

    work_pool: str
    pool_created: bool
    deployments: tuple[DeployedFlow, ...]
    queues: tuple[DeployedQueue, ...] = ()


def queue_priorities(routes: Iterable[Route], default_queue: str) -> dict[str, int]:
    """The Prefect priority of each work queue the routes' flow runs go to, by queue name.

    A route's queue is its `work_queue`, or `default_queue` (the pool's, where the
    deployments run) without one. The queues are ordered by the highest `priority` of the
    routes on them, highest first, equal ones by name, and numbered from 1, Prefect's first
    served: Prefect gives each queue of a pool a priority of its own. Empty when no route
    names a work queue (the pool's queues are then left as they are).
    """
    routes = list(routes)
    if not any(route.work_queue for route in routes):
        return {}
    highest: dict[str, int] = {}
    for route in routes:
        queue = route.work_queue or default_queue
        highest[queue] = max(route.priority, highest.get(queue, route.priority))
    ranked = sorted(highest, key=lambda queue: (-highest[queue], queue))
    return {queue: rank for rank, queue in enumerate(ranked, 1)}


def deployment_name(flow: RegisteredFlow, deployment: str) -> str:
    """The deployment of a registered flow: `<its Prefect name>/<the name in deployment>`,
    where the config's `deployment` (`wait/<name>`) names the wait flow's."""
    return f"{flow.prefect_name}/{deployment.partition('/')[2]}"


async def deploy(
    work_pool: str,
    deployment: str,
    flows: Sequence[RegisteredFlow] | None = None,
    routes: Iterable[Route] = (),
) -> Deployed:
    """Create the process work pool `work_pool` if missing, and register each of `flows`
    (default: only wait) on it as `<flow>/<name>`, `deployment` being the wait flow's
    `wait/<name>`, against the Prefect API of the current settings. Each route's own
    `deployment` is registered the same way, and the routes' work queues get their
    priorities (`queue_priorities`)."""
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

    routes = list(routes)
    names = list(dict.fromkeys([deployment, *(r.deployment for r in routes if r.deployment)]))
    for each in names:
        if each.partition("/")[0] != wait.name:
            raise ValueError(f"deployment {each!r} is not a deployment of the {wait.name} flow")
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
        for each, flow in ((each, flow) for each in names for flow in flows):
            where, function, by_file = split_entrypoint(flow.entrypoint)
            runner_deployment = RunnerDeployment.from_flow(
                flow.flow,
                name=each.partition("/")[2],
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
                    deployment=deployment_name(flow, each),
                    deployment_id=str(deployment_id),
                    entrypoint=str(runner_deployment.entrypoint),
                )
            )
        queues = await _set_queues(client, work_pool, routes)
    return Deployed(
        work_pool=work_pool, pool_created=created, deployments=tuple(done), queues=queues
    )


async def _set_queues(
    client: PrefectClient, work_pool: str, routes: list[Route]
) -> tuple[DeployedQueue, ...]:
    """Create or set the priority of each queue the routes use, first served first: Prefect
    moves the pool's other queues down to keep every priority its own, so each queue is
    read again just before it is set."""
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if not any(route.work_queue for route in routes):
        return ()
    pool = await client.read_work_pool(work_pool)
    default_queue = next(
        queue.name
        for queue in await client.read_work_queues(work_pool_name=work_pool)
        if queue.id == pool.default_queue_id
    )
    done = []
    ranked = sorted(queue_priorities(routes, default_queue).items(), key=lambda item: item[1])
    for name, priority in ranked:
        try:
            queue = await client.read_work_queue_by_name(name, work_pool_name=work_pool)
        except ObjectNotFound:
            try:
                await client.create_work_queue(
                    name,
                    description="dropflow's routes' flow runs",
                    priority=priority,
                    work_pool_name=work_pool,
                )
                done.append(DeployedQueue(name, priority, "created"))
                continue
            except ObjectAlreadyExists:  # another `deploy`, or a flow run, made it meanwhile
                queue = await client.read_work_queue_by_name(name, work_pool_name=work_pool)
        if queue.priority == priority:
            done.append(DeployedQueue(name, priority, "unchanged"))
        else:
            await client.update_work_queue(queue.id, priority=priority)
            done.append(DeployedQueue(name, priority, "updated"))
    return tuple(done)

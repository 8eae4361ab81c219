"""`InProcessWorker` (`prefect worker start --type dropflow`) on the cluster's server, found by
Prefect through dropflow's entry point, serving `DeploymentRunner`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, Worker
from watcher.runner import RunRequest
from watcher.worker import IN_PROCESS_POOL_TYPE

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture
def in_process_worker(cluster: Cluster) -> Iterator[Worker]:
    """An in-process worker on a pool of its own, which it creates; gone at the end."""
    worker = cluster.add_worker("inproc-1", pool="inproc", worker_type=IN_PROCESS_POOL_TYPE)
    try:
        yield worker
    finally:
        worker.stop()
        cluster.workers.remove(worker)


@pytest.mark.anyio
async def test_the_in_process_worker_runs_deployment_runs_without_a_process_each(
    cluster: Cluster, in_process_worker: Worker
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from watcher.deploy import deploy
    from watcher.deployment import DeploymentRunner

    with temporary_settings({PREFECT_API_URL: cluster.url}):
        async with get_client() as client:
            pool = await client.read_work_pool("inproc")
        assert pool.type == IN_PROCESS_POOL_TYPE
        await asyncio.wait_for(deploy("inproc", "wait/inproc"), 60)
        runner = DeploymentRunner(
            "wait/inproc", "inproc", max_attempts=1, start_timeout=None, lost_run_margin=60
        )
        await asyncio.wait_for(runner.start(), 60)
        try:
            requests = [
                RunRequest("20261127T000000.000000-ip0001", "inproc-done", 5, 0.5),
                RunRequest("20261127T000000.000000-ip0002", "inproc-late", 0.5, 3),
                RunRequest("20261127T000000.000000-ip0003", "inproc-done2", 5, 0),
            ]
            jobs = [asyncio.create_task(runner.run(r)) for r in requests]
            # While they run, the worker has started no process for them.
            assert in_process_worker.proc is not None
            while not all(job.done() for job in jobs):
                assert _children(in_process_worker.proc.pid) == []
                await asyncio.sleep(0.05)
            outcomes = [job.result() for job in jobs]
        finally:
            await asyncio.wait_for(runner.close(), 30)
    assert [o.status for o in outcomes] == ["completed", "canceled", "completed"]
    assert outcomes[1].message == "Canceled: the work (3 s) ran past the 0.5 s timeout."
    # The worker's name is read from its event, which a run this short may finish before the
    # server has stored: named where Prefect reports it, and then the right one.
    assert {o.worker for o in outcomes} - {None} == {"inproc-1"}
    assert {o.work_pool for o in outcomes} == {"inproc"}
    assert in_process_worker.proc.poll() is None  # still serving


def _children(pid: int) -> list[str]:
    """The pids of a process's children (Linux)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            children += (task / "children").read_text().split()
    return children

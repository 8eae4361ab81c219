"""`InProcessWorker` (`prefect worker start --type dropflow`) on the cluster's server, found by
Prefect through dropflow's entry point, serving `DeploymentRunner`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, Worker
from watcher.running.contract import RunRequest
from watcher.running.worker import IN_PROCESS_POOL_TYPE

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

    from watcher.running.deployment.registration import deploy
    from watcher.running.deployment.runner import DeploymentRunner

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
            assert in_process_worker.proc is not None
            pid = in_process_worker.proc.pid
            before = _children_cpu(pid)
            outcomes = await asyncio.gather(*(runner.run(r) for r in requests))
        finally:
            await asyncio.wait_for(runner.close(), 30)
    # The worker started no process for them: none is left, and none came and went (a child
    # that ended and was waited for adds its CPU time to the worker's; a Python process that
    # imports Prefect to run a flow costs far more than 0.05 s).
    assert _children(pid) == []
    assert _children_cpu(pid) - before < 0.05
    assert [o.status for o in outcomes] == ["completed", "canceled", "completed"]
    assert outcomes[1].message == "Canceled: the work (3 s) ran past the 0.5 s timeout."
    # The worker's name is read from its event, which a run this short may finish before the
    # server has stored: named where Prefect reports it, and then the right one.
    assert {o.worker for o in outcomes} - {None} == {"inproc-1"}
    assert {o.work_pool for o in outcomes} == {"inproc"}
    assert in_process_worker.proc.poll() is None  # still serving


@pytest.mark.anyio
async def test_a_freed_slot_is_filled_without_waiting_for_the_next_poll(
    cluster: Cluster, tmp_path: Path
) -> None:
    # One slot, a poll every 60 s, and two runs scheduled before the worker starts: its first
    # poll takes one; the other can only start within the minute if the end of the first asks.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import arun_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from watcher.running.deployment.registration import deploy

    with temporary_settings({PREFECT_API_URL: cluster.url}):
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="asker", type=IN_PROCESS_POOL_TYPE))
            await asyncio.wait_for(deploy("asker", "wait/asker"), 60)
            runs = [
                await arun_deployment(
                    "wait/asker",
                    client=client,
                    parameters={"timeout": 30, "sleep": 0.5, "name": f"asker-{i}"},
                    timeout=0,
                )
                for i in range(2)
            ]
            worker = Worker(
                "asker-1",
                "asker",
                cluster.url,
                tmp_path / "asker-home",
                limit=1,
                extra_env={"PREFECT_WORKER_QUERY_SECONDS": "60"},
                worker_type=IN_PROCESS_POOL_TYPE,
            ).start()
            try:
                ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in runs]))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 45
                while True:
                    ended = await client.read_flow_runs(flow_run_filter=ids)
                    if all(run.end_time for run in ended) or loop.time() > deadline:
                        break
                    await asyncio.sleep(0.2)
            finally:
                worker.stop()
    states = sorted((str(r.start_time), r.state_name, str(r.end_time)) for r in ended)
    assert all(run.end_time for run in ended), f"not both ended within 45 s: {states}"
    first, second = sorted(ended, key=lambda run: str(run.start_time))
    assert first.start_time and first.end_time and second.start_time
    assert (second.start_time - first.end_time).total_seconds() < 20, states
    assert [run.state_name for run in ended] == ["Completed", "Completed"]


def _children_cpu(pid: int) -> float:
    """Seconds of CPU used by a process's children that ended and were waited for (Linux
    /proc/PID/stat cutime + cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[str]:
    """The pids of a process's children (Linux)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            children += (task / "children").read_text().split()
    return children

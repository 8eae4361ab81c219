"""`runner: deployment` end to end: real PostgreSQL, a real `prefect server` on it, 2 real
process workers (`prefect worker start --limit 2`, polling every second), and `dropflow run` as
a subprocess. The cluster starts once per session (tests/cluster.py); each process-worker run
costs seconds of CPU on 2 cores, so each test keeps its number of runs small."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.cluster import Cluster
from tests.conftest import ServiceFactory
from tests.harness import ServiceProcess, claim_folders, wait_until
from tests.test_events import check_job_events, wait_events

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CompareKeys = ("job", "status", "message", "name", "sleep", "timeout")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


async def _runs(url: str, names: list[str]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)), limit=200
            )


async def _task_run_states(url: str, flow_run_ids: list[str]) -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in flow_run_ids]))
    found: dict[str, list[str]] = {i: [] for i in flow_run_ids}
    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            for run in await client.read_task_runs(flow_run_filter=flt, limit=200):
                found[str(run.flow_run_id)].append(run.state.type.value if run.state else "")
    return found


def runs_by_name(cluster: Cluster, names: list[str]) -> dict[str, list[Any]]:
    """Every flow run of the cluster's server named after one of `names`."""
    found: dict[str, list[Any]] = {name: [] for name in names}
    for run in asyncio.run(_runs(cluster.url, names)):
        found[run.name].append(run)
    return found


@pytest.fixture
def deployed(tmp_path: Path, cluster: Cluster) -> Iterator[Callable[..., ServiceProcess]]:
    """Start `dropflow run` with `runner: deployment` against the cluster."""
    started: list[ServiceProcess] = []

    def make(config: dict[str, Any] | None = None, *, start: bool = True) -> ServiceProcess:
        proc = ServiceProcess(
            tmp_path,
            {"runner": "deployment", "max_concurrent_jobs": 20, **(config or {})},
            api_url=cluster.url,
            prefect_home=tmp_path / "prefect-home",
        )
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.kill()


# 20 jobs as the issue asks: 12 complete, 4 run past their timeout, 4 are bad files (16 runs).
JOBS = {
    **{f"dp-ok{i}.yaml": f"timeout: 5\nsleep: {i / 10:g}\n" for i in range(11)},
    "dp-named.yaml": "timeout: 5\nsleep: 0.5\nname: dp-second\n",
    **{f"dp-late{i}.yaml": f"timeout: {0.5 + i / 4:g}\nsleep: 3\n" for i in range(4)},
    "dp-typo.yaml": "timout: 1\n",
    "dp-bad.yaml": "timeout: ten\n",
    "dp-unknown.yaml": "timeout: 1\ncolour: red\n",
    "dp-list.yaml": "- a\n- b\n",
}


def test_jobs_through_two_workers_match_the_in_process_runner(
    deployed: Callable[..., ServiceProcess], service: ServiceFactory, cluster: Cluster
) -> None:
    svc = deployed()
    for name, text in JOBS.items():
        svc.drop(name, text)
    remote = {name: svc.wait_result(name, timeout=180) for name in JOBS}
    assert svc.stop() == 0

    local_svc = service(
        {
            "inbox": "local-in",
            "results": "local-out",
            "archive": "local-arch",
            "processing": "local-proc",
        }
    )
    for name, text in JOBS.items():
        local_svc.drop(name, text)
    local = {name: local_svc.wait_result(name, timeout=60) for name in JOBS}

    for name in JOBS:
        assert {k: remote[name].get(k) for k in CompareKeys} == {
            k: local[name].get(k) for k in CompareKeys
        }, name
    assert [remote[n]["status"] for n in JOBS] == ["completed"] * 12 + ["canceled"] * 4 + [
        "error"
    ] * 4

    # Each status's events, as with the in-process runner (tests/test_events.py).
    some = {name: remote[name] for name in ("dp-ok0.yaml", "dp-late0.yaml", "dp-typo.yaml")}
    events = wait_events(cluster.url, some, 3 + 3 + 2)
    check_job_events(events, "dp-ok0.yaml", remote["dp-ok0.yaml"])
    check_job_events(events, "dp-late0.yaml", remote["dp-late0.yaml"])
    check_job_events(events, "dp-typo.yaml", remote["dp-typo.yaml"], started=False)

    ran = [n for n in JOBS if remote[n]["status"] != "error"]
    submitted = {w.name: set(w.submitted()) for w in cluster.workers}
    assert all(submitted.values()), f"runs did not spread over both workers: {submitted}"
    for name in ran:
        result = remote[name]
        assert result["work_pool"] == "dropflow"
        assert result["flow_run_name"] in submitted[result["worker"]], (name, submitted)

    runs = runs_by_name(cluster, [remote[n]["flow_run_name"] for n in ran])
    for name in ran:
        (run,) = runs[remote[name]["flow_run_name"]]
        assert str(run.id) == remote[name]["flow_run_id"]
        if remote[name]["status"] == "canceled":
            # The timeout counts from the flow run's start on the worker.
            ran_for = (run.end_time - run.start_time).total_seconds()
            # Stopped by its timeout, not left to finish its 3 s of work. How soon after the
            # timeout is a performance figure (measured +0.30 s and +0.68 s on the 2-core
            # machine, 4 flow processes at once): W4 measures it (d, `python -m bench.deployment`).
            assert ran_for < 3, (name, ran_for)

    # The task run of a job stopped at its timeout ends Cancelled on the workers too (not
    # Failed: Prefect's TimedOut). Task run states reach the server as events, a moment late.
    canceled = [str(remote[n]["flow_run_id"]) for n in ran if remote[n]["status"] == "canceled"]

    def final() -> dict[str, list[str]] | None:
        states = asyncio.run(_task_run_states(cluster.url, canceled))
        ended = all(found and set(found) <= FINAL for found in states.values())
        return states if ended else None

    states = wait_until(final, 30, interval=0.5)
    assert states == {i: ["CANCELLED"] for i in canceled}


def test_a_watcher_killed_three_times_mid_batch_re_attaches(
    deployed: Callable[..., ServiceProcess], cluster: Cluster
) -> None:
    names = [f"dk{i}.yaml" for i in range(6)]
    svc = deployed()
    for name in names:
        svc.drop(name, "timeout: 10\nsleep: 1\n")
    for kill in range(3):
        # Kill once every job has its flow run in the API, before they all finished.
        wait_until(lambda: all(runs_by_name(cluster, [n[:-5] for n in names]).values()), 120, 0.2)
        pending = claim_folders(svc.processing)
        svc.kill()
        assert pending, f"kill {kill + 1} came after the batch finished"
        svc = deployed()
    for name in names:
        svc.wait_result(name, timeout=180)
    svc.stop()

    runs = runs_by_name(cluster, [n[:-5] for n in names])
    results = sorted(p.name for p in svc.results.iterdir())
    assert results == sorted(f"{n[:-5]}.result.yaml" for n in names)
    for name in names:
        result = svc.wait_result(name)
        assert result["status"] == "completed"
        assert [str(r.id) for r in runs[name[:-5]]] == [result["flow_run_id"]], name


def test_sigterm_leaves_the_run_on_its_worker_and_the_next_start_re_attaches(
    deployed: Callable[..., ServiceProcess], cluster: Cluster
) -> None:
    svc = deployed({"shutdown_grace": 1})
    svc.drop("dterm.yaml", "timeout: 60\nsleep: 15\n")

    def running() -> Any:
        runs = runs_by_name(cluster, ["dterm"])["dterm"]
        return runs[0] if runs and runs[0].state.is_running() else None

    run = wait_until(running, 120, 0.2)
    t0 = time.monotonic()
    assert svc.stop(signal.SIGTERM) == 0
    # Gone within its 1 s grace plus the time to exit (seconds on a busy machine), not after
    # the run's 15 s of work.
    assert time.monotonic() - t0 < 1 + 9
    (still,) = runs_by_name(cluster, ["dterm"])["dterm"]
    assert not still.state.is_final() and not still.state.is_cancelling()

    svc = deployed()
    result = svc.wait_result("dterm.yaml", timeout=120)
    assert result["status"] == "completed"
    assert result["flow_run_id"] == str(run.id)
    assert len(runs_by_name(cluster, ["dterm"])["dterm"]) == 1


def test_a_worker_killed_mid_run_gets_its_job_run_again_elsewhere(
    deployed: Callable[..., ServiceProcess], cluster: Cluster
) -> None:
    svc = deployed({"lost_run_margin": 2})
    svc.drop("dlost.yaml", "timeout: 8\nsleep: 5\n")

    def running() -> Any:
        runs = runs_by_name(cluster, ["dlost"])["dlost"]
        ok = runs and runs[0].state.is_running() and runs[0].infrastructure_pid
        return runs[0] if ok else None

    run = wait_until(running, 120, 0.1)
    victims = [w for w in cluster.workers if "dlost" in w.submitted()]
    assert len(victims) == 1, "\n\n".join(w.output.text() for w in cluster.workers)
    (victim,) = victims
    # The machine dies: the worker and the flow run's process (a session of its own) with it.
    victim.kill()
    os.kill(int(run.infrastructure_pid), signal.SIGKILL)
    cluster.workers.remove(victim)
    try:
        result = svc.wait_result("dlost.yaml", timeout=180)
    finally:
        cluster.add_worker(f"{victim.name}-again")
    assert result["status"] == "completed"
    assert result["worker"] != victim.name
    runs = runs_by_name(cluster, ["dlost"])["dlost"]
    assert len(runs) == 2
    first = next(r for r in runs if r.id == run.id)
    assert first.state.is_crashed()
    assert result["flow_run_id"] != str(run.id)
    assert sorted(p.name for p in svc.results.iterdir()) == ["dlost.result.yaml"]


def test_registered_flows_run_on_workers_and_are_stopped_at_their_timeout(
    deployed: Callable[..., ServiceProcess], cluster: Cluster, tmp_path: Path
) -> None:
    from tests.harness import ROOT
    from watcher.running.deployment.runner import NO_RETURN

    flows = {
        "wait": "flows.wait:wait",
        "nap_async": f"{ROOT / 'tests' / 'userflows.py'}:nap_async",
        "nap_sync": f"{ROOT / 'tests' / 'userflows.py'}:nap_sync",
    }
    svc = deployed({"flows": flows}, start=False)
    done = cluster.deploy(flows=flows)
    assert "deployment nap-sync/dropflow (" in done.stdout, done.stdout
    assert f"entrypoint {ROOT / 'tests' / 'userflows.py'}:nap_async" in done.stdout
    svc.start()
    work = 60
    svc.drop("fl-done.yaml", "flow: nap_sync\nparameters: {seconds: 0, label: w}\ntimeout: 60\n")
    svc.drop("fl-sync.yaml", f"flow: nap_sync\nparameters: {{seconds: {work}}}\ntimeout: 3\n")
    svc.drop("fl-async.yaml", f"flow: nap_async\nparameters: {{seconds: {work}}}\ntimeout: 3\n")
    svc.drop("fl-bad.yaml", "flow: nap_sync\nparameters: {seconds: soon}\n")

    bad = svc.wait_result("fl-bad.yaml", timeout=60)
    assert bad["message"] == "fl-bad.yaml: parameters.seconds: must be a number, got 'soon'"
    ok = svc.wait_result("fl-done.yaml", timeout=120)
    assert (ok["status"], ok["flow"], ok["return_note"]) == ("completed", "nap_sync", NO_RETURN)
    assert ok["work_pool"] == cluster.pool and ok.get("worker"), ok
    names = ["fl-sync", "fl-async"]
    for name in names:
        late = svc.wait_result(f"{name}.yaml", timeout=120)
        assert late["status"] == "canceled", late
        assert late["message"].startswith("Stopped at the timeout: flow 'nap_"), late

    def stopped() -> dict[str, list[Any]] | None:
        runs = runs_by_name(cluster, names)
        final = all(len(r) == 1 and r[0].state.is_final() for r in runs.values())
        return runs if final else None

    # Cancelling through Prefect: the worker stops the run's process, long before its work.
    for name, (run,) in wait_until(stopped, 90).items():
        assert run.state.is_cancelled(), (name, run.state)
        assert (run.end_time - run.start_time).total_seconds() < work / 2, name


def test_routes_run_on_their_own_deployments_and_prioritised_work_queues(
    deployed: Callable[..., ServiceProcess], cluster: Cluster, tmp_path: Path
) -> None:
    from tests.harness import QUIET_PREFECT

    config = {
        "work_pool": "dq-pool",  # a pool of its own: the session's pool and queues stay as they are
        "deployment": "wait/dq-main",
        "routes": {
            "high": {
                "inbox": "in/high",
                "priority": 10,
                "deployment": "wait/dq-high",
                "work_queue": "dq-high",
            },
            "low": {"inbox": "in/low", "priority": 1, "work_queue": "dq-low"},
        },
    }
    svc = deployed(config, start=False)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump({"runner": "deployment", **config}))

    def deploy() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "watcher", "deploy", "--config", str(path)],
            env={**os.environ, **QUIET_PREFECT, "PREFECT_API_URL": cluster.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = deploy()
    assert "work queue dq-high (priority 1, created)" in first, first
    assert "work queue dq-low (priority 2, created)" in first, first
    assert "deployment wait/dq-high (" in first and "deployment wait/dq-main (" in first
    second = deploy()
    assert "work queue dq-high (priority 1, unchanged)" in second, second
    assert "work queue dq-low (priority 2, unchanged)" in second, second

    worker = cluster.add_worker("dq-worker", pool="dq-pool")
    try:
        svc.start()
        for route in ("high", "low"):
            job = tmp_path / f"{route}.tmp"
            job.write_text("timeout: 30\nsleep: 0\n")
            os.rename(job, tmp_path / "in" / route / f"q-{route}.yaml")
        results = {
            route: wait_until(
                lambda route=route: _read(tmp_path / "results" / route / f"q-{route}.result.yaml"),
                180,
                0.2,
            )
            for route in ("high", "low")
        }
        assert svc.stop() == 0
    finally:
        cluster.workers.remove(worker)
        worker.stop()
    for route, result in results.items():
        assert (result["status"], result["route"]) == ("completed", route), result
        assert result["work_pool"] == "dq-pool" and result["worker"] == "dq-worker", result

    async def read() -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: cluster.url}):
            async with get_client() as client:
                runs = {}
                for route, result in results.items():
                    run = await client.read_flow_run(UUID(result["flow_run_id"]))
                    assert run.deployment_id is not None
                    deployment = await client.read_deployment(run.deployment_id)
                    runs[route] = (str(run.work_queue_name), f"wait/{deployment.name}")
                queues = await client.read_work_queues(work_pool_name="dq-pool")
                return runs, {q.name: q.priority for q in queues}

    runs, priorities = asyncio.run(read())
    assert runs == {"high": ("dq-high", "wait/dq-high"), "low": ("dq-low", "wait/dq-main")}
    assert priorities == {"dq-high": 1, "dq-low": 2, "default": 3}


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data

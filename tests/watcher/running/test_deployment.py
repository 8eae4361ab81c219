"""`dropflow deploy` and `DeploymentRunner` in this process, against the cluster's server.

None of these runs a flow on a worker: they use work pools no worker serves."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.harness import QUIET_PREFECT
from watcher.cli.app import main
from watcher.config.settings import ConfigError, load_config
from watcher.running.contract import RunnerUnavailable, RunRequest

pytestmark = pytest.mark.timeout(240)


def _deploy(cluster: Cluster, tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "watcher", "deploy", "--config", str(path)],
        env={
            **os.environ,
            **QUIET_PREFECT,
            "PREFECT_API_URL": cluster.url,
            "PREFECT_HOME": str(tmp_path / "home"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cluster_api(cluster: Cluster) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: cluster.url}):
        yield cluster.url


def test_deployment_keys_have_defaults_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("runner: deployment\n")
    settings = load_config(path)
    assert (settings.work_pool, settings.deployment) == ("dropflow", "wait/dropflow")
    assert settings.start_timeout is None
    path.write_text("deployment: other/prod\n")
    with pytest.raises(ConfigError, match="deployment: must be 'wait/<deployment name>'"):
        load_config(path)


@pytest.mark.parametrize("command", ["run", "deploy"])
def test_without_prefect_api_url_deployment_mode_stops_with_exit_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not os.environ.get("PREFECT_API_URL")
    path = tmp_path / "config.yaml"
    path.write_text("runner: deployment\n")
    assert main([command, "--config", str(path)]) == 2
    assert "runner: deployment needs PREFECT_API_URL" in capsys.readouterr().err
    assert not (tmp_path / "inbox").exists()


@pytest.mark.cluster
def test_deploy_twice_changes_nothing(cluster: Cluster, tmp_path: Path, cluster_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    config = "runner: deployment\nwork_pool: twice\ndeployment: wait/twice\n"
    first = _deploy(cluster, tmp_path, config)
    assert first.returncode == 0, first.stderr
    assert "work pool twice (created)" in first.stdout

    async def read() -> tuple[object, ...]:
        async with get_client() as client:
            pool = await client.read_work_pool("twice")
            deployment = await client.read_deployment_by_name("wait/twice")
            return (
                pool.type,
                pool.concurrency_limit,
                deployment.id,
                deployment.entrypoint,
                deployment.work_pool_name,
                deployment.path,
                deployment.parameters,
            )

    async def limit_pool() -> None:
        async with get_client() as client:
            await client.update_work_pool("twice", WorkPoolUpdate(concurrency_limit=3))

    asyncio.run(limit_pool())
    before = asyncio.run(read())
    assert before[:2] == ("process", 3)
    assert before[3:6] == ("flows.wait.wait", "twice", None)
    second = _deploy(cluster, tmp_path, config)
    assert second.returncode == 0, second.stderr
    assert "work pool twice (already there)" in second.stdout
    assert asyncio.run(read()) == before


@pytest.mark.cluster
@pytest.mark.anyio
async def test_a_job_no_worker_starts_waits_then_errors_naming_the_pool(
    cluster: Cluster, cluster_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import get_client

    from watcher.running.deployment.registration import deploy
    from watcher.running.deployment.runner import DeploymentRunner

    await asyncio.wait_for(deploy("nobody", "wait/nobody"), 60)
    runner = DeploymentRunner(
        "wait/nobody",
        "nobody",
        max_attempts=3,
        start_timeout=2.5,
        lost_run_margin=60,
        check_interval=0.2,
        waiting_log_interval=0.5,
    )
    await asyncio.wait_for(runner.start(), 60)
    caplog.set_level(logging.INFO, logger="watcher.running.deployment.runner")
    try:
        request = RunRequest(
            "20261127T000000.000000-aaaaaa", "nobody1", 1, 0, work_queue="nobody-queue"
        )
        outcome = await asyncio.wait_for(runner.run(request), 60)
    finally:
        await asyncio.wait_for(runner.close(), 30)
    assert outcome.status == "error"
    assert (
        "No worker on work pool 'nobody' (work queue 'nobody-queue') started the flow run within "
        "2.5 s" in outcome.message
    )
    assert outcome.flow_run_id is not None
    async with get_client() as client:
        run = await client.read_flow_run(outcome.flow_run_id)  # type: ignore[arg-type]
    assert run.state is not None and run.state.is_cancelled()
    assert run.name == "nobody1" and run.idempotency_key == "20261127T000000.000000-aaaaaa"
    assert run.work_queue_name == "nobody-queue"
    assert "1 job(s) wait for a worker on work pool 'nobody'" in caplog.text


@pytest.mark.cluster
@pytest.mark.anyio
async def test_a_missing_deployment_stops_the_start_with_a_hint(
    cluster: Cluster, cluster_api: str
) -> None:
    from watcher.running.deployment.runner import DeploymentRunner

    runner = DeploymentRunner(
        "wait/never-deployed", "dropflow", max_attempts=1, start_timeout=None, lost_run_margin=1
    )
    try:
        with pytest.raises(RunnerUnavailable, match="run `dropflow deploy"):
            await asyncio.wait_for(runner.start(), 60)
    finally:
        await asyncio.wait_for(runner.close(), 30)


@pytest.mark.cluster
@pytest.mark.anyio
async def test_a_finished_run_is_seen_through_events_not_the_slow_check(
    cluster: Cluster, cluster_api: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    from watcher.running.deployment.registration import deploy
    from watcher.running.deployment.runner import DeploymentRunner

    await asyncio.wait_for(deploy("nobody", "wait/nobody"), 60)
    runner = DeploymentRunner(
        "wait/nobody",
        "nobody",
        max_attempts=1,
        start_timeout=None,
        lost_run_margin=60,
        check_interval=60,
    )
    await asyncio.wait_for(runner.start(), 60)
    try:
        await asyncio.wait_for(_until(lambda: runner._subscribed), 30)
        job = asyncio.create_task(
            runner.run(RunRequest("20261127T000000.000000-cccccc", "evented", 1, 0))
        )
        await asyncio.wait_for(_until(lambda: bool(runner._watched)), 30)
        (run_id,) = runner._watched
        # Its first full check is done: the next one is 60 s away.
        await asyncio.wait_for(_until(lambda: runner._watched[run_id].state == "SCHEDULED"), 30)
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Completed(message="done elsewhere"), force=True)
        t0 = time.monotonic()
        outcome = await asyncio.wait_for(job, 30)
        noticed = time.monotonic() - t0
    finally:
        await asyncio.wait_for(runner.close(), 30)
    assert (outcome.status, outcome.message) == ("completed", "done elsewhere")
    assert noticed < 5, noticed  # the full check comes every 60 s here


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.05)

"""Prefect events end to end: `dropflow run` against the shared `prefect server`, the events
read back from its API, and the two automation recipes of docs/operating.md acting on them
through a webhook block that calls an HTTP server of the test's own."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import PrefectServer, post_json, wait_until
from watcher.service.events import event_fields

ROOT = Path(__file__).resolve().parent.parent


def read_events(url: str, claim_ids: list[str]) -> list[dict[str, Any]]:
    """The dropflow events of these claims that the server at `url` stored, oldest first."""
    body = {
        "filter": {
            "event": {"prefix": ["dropflow.job."]},
            "resource": {"id": [f"dropflow.job.{claim}" for claim in claim_ids]},
            "order": "ASC",
        },
        "limit": 50,
    }
    events: list[dict[str, Any]] = post_json(f"{url}/events/filter", body)["events"]
    return events


def wait_events(url: str, results: dict[str, dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Wait until the server stored `count` events of these results' claims (it writes them
    in batches); fail if it stores more."""
    claims = [result["claim_id"] for result in results.values()]
    found = wait_until(lambda: (e := read_events(url, claims)) and len(e) >= count and e, 30, 0.5)
    assert len(found) == count, [e["event"] for e in found]
    return list(found)


def check_job_events(
    events: list[dict[str, Any]], job: str, result: dict[str, Any], *, started: bool = True
) -> None:
    """The events of one job, in order: received, started (if it ran), its status; each with
    the job as its resource, and its flow run related to the last one."""
    mine = [e for e in events if e["resource"]["prefect.resource.id"].endswith(result["claim_id"])]
    status = result["status"]
    steps = ["received", "started"] if started else ["received"]
    assert [e["event"] for e in mine] == [f"dropflow.job.{s}" for s in [*steps, status]], job
    flow = result.get("flow")
    labels = [*[("waiting", None), ("running", flow)][: len(steps)], (status, flow)]
    for event, (state, flow_label) in zip(mine, labels, strict=True):
        resource = event["resource"]
        expected = {
            "prefect.resource.id": f"dropflow.job.{result['claim_id']}",
            "prefect.resource.name": job,
            "dropflow.route": "default",
            "dropflow.status": state,
        }
        if flow_label:
            expected["dropflow.flow"] = flow_label
        assert resource == expected, (job, event["event"])
    last = mine[-1]
    assert last["payload"]["message"] == result["message"]
    assert last["payload"]["attempt"] == result["attempt"]
    if result.get("flow_run_id"):
        assert last["related"] == [
            {
                "prefect.resource.id": f"prefect.flow-run.{result['flow_run_id']}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": result["flow_run_name"],
            }
        ]
    else:
        assert last["related"] == []


# -- the recipes -------------------------------------------------------------------------------


def recipe(heading: str) -> dict[str, Any]:
    """The automation YAML under one recipe heading of docs/operating.md."""
    text = (ROOT / "docs/operating.md").read_text()
    section = text.split(f"### Recipe: {heading}\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, heading
    loaded: dict[str, Any] = yaml.safe_load(blocks[0])
    return loaded


class Hooks:
    """A loopback HTTP server that keeps the body of every call it gets."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[float, str]] = queue.Queue()
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                calls.put((time.time(), body.decode()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait(self, naming: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first call whose body names `naming` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, body = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no webhook call naming {naming!r} in {timeout}s") from None
            if naming in body:
                return at, json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def create_automation(
    url: str, hook_url: str, automation: dict[str, Any]
) -> tuple[UUID, UUID]:
    """Create a webhook block calling `hook_url` and `automation` (a recipe) acting through it."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        hook = Webhook(method="POST", url=hook_url, headers={"Content-Type": "application/json"})
        block_id = await hook.asave(f"dropflow-test-{time.time_ns()}", overwrite=True)
        automation["actions"][0]["block_document_id"] = str(block_id)
        async with get_client() as client:
            created = await client.create_automation(AutomationCore.model_validate(automation))
    return created, block_id


async def _delete(url: str, automation_id: UUID, block_id: UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            await client.delete_automation(automation_id)
            await client.delete_block_document(block_id)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    yield server
    server.close()


@pytest.fixture
def automation(prefect_server: PrefectServer, hooks: Hooks) -> Iterator[Any]:
    """Create automations (from a recipe) calling `hooks`; deleted at the end."""
    made: list[tuple[UUID, UUID]] = []

    def create(spec: dict[str, Any]) -> None:
        made.append(asyncio.run(create_automation(prefect_server.url, hooks.url, spec)))

    yield create
    for automation_id, block_id in made:
        asyncio.run(_delete(prefect_server.url, automation_id, block_id))


# -- the tests ---------------------------------------------------------------------------------


def test_each_job_sends_its_events_and_an_error_calls_the_webhook(
    service: ServiceFactory, prefect_server: PrefectServer, hooks: Hooks, automation: Any
) -> None:
    automation(recipe("call a webhook when a job errors"))
    twice = _send_one_event_twice(prefect_server.url)
    svc = service()
    jobs = {
        "ev-ok.yaml": "timeout: 5\nsleep: 0\n",
        "ev-late.yaml": "timeout: 0.2\nsleep: 5\n",
        "ev-typo.yaml": "timout: 5\n",
    }
    for name, text in jobs.items():
        svc.drop(name, text)
    results = {name: svc.wait_result(name) for name in jobs}
    assert [r["status"] for r in results.values()] == ["completed", "canceled", "error"]

    _, call = hooks.wait("ev-typo.yaml", timeout=30)
    typo = results["ev-typo.yaml"]
    assert call == {
        "job": "ev-typo.yaml",
        "route": "default",
        "claim_id": typo["claim_id"],
        "message": typo["message"],
    }

    assert svc.stop() == 0
    events = wait_events(prefect_server.url, results, 3 + 3 + 2)
    check_job_events(events, "ev-ok.yaml", results["ev-ok.yaml"])
    check_job_events(events, "ev-late.yaml", results["ev-late.yaml"])
    check_job_events(events, "ev-typo.yaml", typo, started=False)
    # Sent before the jobs' events, it is stored by now: once.
    assert len(read_events(prefect_server.url, [twice])) == 1


def test_no_job_received_within_the_window_calls_the_webhook(
    service: ServiceFactory, prefect_server: PrefectServer, hooks: Hooks, automation: Any
) -> None:
    spec = recipe("no job received for N minutes")
    spec["trigger"]["within"] = 10  # the smallest window Prefect allows a proactive trigger
    automation(spec)
    svc = service()
    svc.drop("ev-last.yaml", "timeout: 5\nsleep: 0\n")
    result = svc.wait_result("ev-last.yaml")
    called_at, call = hooks.wait("ev-last.yaml", timeout=40)
    (received,) = [
        e
        for e in wait_events(prefect_server.url, {"last": result}, 3)
        if e["event"] == "dropflow.job.received"
    ]
    assert call["route"] == "default" and call["last_job"] == "ev-last.yaml"
    occurred = _timestamp(received["occurred"])
    assert _timestamp(call["last_received"]) == pytest.approx(occurred, abs=0.01)
    # Not before the window ends; then within an evaluation period (5 s), the action's own
    # time and a loaded machine's slack.
    silence = called_at - occurred
    print(f"webhook called {silence:.1f}s after the last job was received")
    assert 10 <= silence < 30
    assert svc.stop() == 0


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _send_one_event_twice(url: str) -> str:
    """Send one step's event twice, as after a broken connection; return its claim id. A
    step's event keeps the id it got when recorded (`watcher.service.events.event_fields`), and
    the server keeps one event per id: so sending one again is harmless."""
    from prefect.events import Event

    from watcher.service.events import _connect
    from watcher.service.vitals import JobSeen

    claim = f"twice-{time.time_ns()}"
    fields = event_fields("received", JobSeen("default", claim, "t.yaml", "t.yaml", None))

    async def send() -> None:
        client = await _connect(url)
        try:
            for event in (Event(**fields), Event(**fields)):
                await client.emit(event)
        finally:
            await client.__aexit__(None, None, None)

    asyncio.run(send())
    return claim

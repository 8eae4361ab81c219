"""Each job's steps as Prefect events, for the UI's Event Feed and Prefect automations.

`dropflow.job.received` when a job is claimed (not again when a restart recovers its claim),
`dropflow.job.started` when its flow starts, and one of `dropflow.job.completed`,
`dropflow.job.canceled` or `dropflow.job.error` when its result is published. The resource is
the job: `dropflow.job.<claim id>`, named after its file, labelled with its route, flow and
status; its flow run, once there is one, is a related resource (role `flow-run`).

`JobEvents` is a `JobObserver`: on the service's loop it only queues each step. A sender task
on the same loop streams them through Prefect's events client once the runner has started and
knows its API (`with_events`): the embedded server's, or `PREFECT_API_URL`. While the API does
not answer, events wait in memory, up to `BUFFER` (the oldest are dropped first), and the API's
health is polled before connecting again; the outage and its end are logged once each. A job
never waits for an event, and an event never fails a job. Before the runner closes (and the
embedded server stops), what is queued is sent, for at most `FLUSH_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from watcher.running.contract import Runner, RunOutcome, RunRequest
from watcher.service.vitals import JobSeen, Vitals

if TYPE_CHECKING:
    from prefect.events.clients import EventsClient

__all__ = [
    "BUFFER",
    "EVENT_PREFIX",
    "FLUSH_TIMEOUT",
    "JobEvents",
    "event_fields",
    "with_events",
]

logger = logging.getLogger(__name__)

EVENT_PREFIX = "dropflow.job."
"""Every event's name starts so; the job's resource id too (`dropflow.job.<claim id>`)."""

BUFFER = 1000
"""Events kept in memory while the Prefect API does not answer; beyond, the oldest are dropped."""

FLUSH_TIMEOUT = 5.0
"""Seconds the service waits at its stop for the queued events to be sent."""

RETRY_FIRST, RETRY_MOST = 1.0, 30.0
"""Seconds between looks at the API's health while it does not answer (doubling)."""

_RECONNECTS = 2  # the events client's quick reconnections before an emit fails
_CLOSE_TIMEOUT = 2.0  # seconds for the websocket's closing handshake, after the flush
_MESSAGE_CHARS = 2000  # a result's message in the payload is cut to this length


def _text(value: str) -> str:
    # A file name need not be valid UTF-8 (surrogate escapes); an event must be.
    return value.encode("utf-8", "replace").decode("utf-8")


def event_fields(
    step: str,
    job: JobSeen,
    *,
    flow: str | None = None,
    result: Mapping[str, Any] | None = None,
    occurred: datetime | None = None,
) -> dict[str, Any]:
    """The fields of one job's event (`prefect.events.Event`'s keyword arguments).

    `step`: `received`, `started`, or `finished` (then named after the result's status).
    """
    status = {"received": "waiting", "started": "running"}.get(step)
    if status is None:
        status = str((result or {}).get("status", "error"))
    flow = flow or (str(result["flow"]) if result and result.get("flow") else None)
    resource = {
        "prefect.resource.id": f"{EVENT_PREFIX}{job.claim_id}",
        "prefect.resource.name": _text(job.file),
        "dropflow.route": job.route,
        "dropflow.status": status,
    }
    if flow:
        resource["dropflow.flow"] = flow
    payload: dict[str, Any] = {"claim_id": job.claim_id}
    subfolder = str(PurePosixPath(job.relative).parent)
    if subfolder != ".":
        payload["subfolder"] = _text(subfolder)
    related: list[dict[str, str]] = []
    if step == "received" and job.dropped_at is not None:
        payload["dropped_at"] = datetime.fromtimestamp(job.dropped_at, UTC).isoformat()
    if result is not None:
        payload["message"] = _text(str(result.get("message", "")))[:_MESSAGE_CHARS]
        for key in ("attempt", "duration_s", "flow_run_name", "flow_run_url", "worker"):
            if result.get(key) is not None:
                payload[key] = result[key]
        if result.get("flow_run_id"):
            related.append(
                {
                    "prefect.resource.id": f"prefect.flow-run.{result['flow_run_id']}",
                    "prefect.resource.role": "flow-run",
                    "prefect.resource.name": str(result.get("flow_run_name") or ""),
                }
            )
    name = f"{EVENT_PREFIX}{status if step == 'finished' else step}"
    return {
        "event": name,
        "resource": resource,
        "related": related,
        "payload": payload,
        "occurred": occurred or datetime.now(UTC),
        "id": uuid.uuid4(),  # fixed now: a resent event is the same event to the server
    }


class JobEvents:
    """Sends each job's steps to the Prefect API as events; see the module's docstring."""

    def __init__(self, buffer: int = BUFFER) -> None:
        self._buffer = buffer
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._sender: asyncio.Task[None] | None = None
        self._down: str | None = None  # why the API does not take events, while it does not
        self.sent = 0
        self.dropped = 0

    # -- JobObserver: on the service's loop, never blocking --------------------------------

    def received(self, job: JobSeen) -> None:
        if not job.recovered:  # the service that claimed it said so
            self._put(event_fields("received", job))

    def started(self, job: JobSeen, flow: str) -> None:
        self._put(event_fields("started", job, flow=flow))

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        self._put(event_fields("finished", job, result=result))

    def _put(self, fields: dict[str, Any]) -> None:
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % self._buffer == 0:
                logger.warning(
                    "%d dropflow event(s) dropped: more than %d wait for the Prefect API",
                    self.dropped,
                    self._buffer,
                )
        self._queue.append(fields)
        self._drained.clear()
        self._wake.set()

    # -- the sender ------------------------------------------------------------------------

    def start(self, api_url: str) -> None:
        """Start sending to the Prefect API at `api_url` (on the running loop)."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(api_url), name="dropflow-events")

    async def aclose(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Send what is queued, waiting at most `timeout` seconds, then stop."""
        sender, self._sender = self._sender, None
        if sender is None:
            if self._queue:
                logger.info(
                    "%d dropflow event(s) not sent: the runner never reached the Prefect API",
                    len(self._queue),
                )
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        if self._queue:
            logger.warning(
                "%d dropflow event(s) not sent: the Prefect API did not take them within %gs "
                "of the stop",
                len(self._queue),
                timeout,
            )

    async def _send(self, url: str) -> None:
        client: EventsClient | None = None
        delay = RETRY_FIRST
        try:
            while True:
                if not self._queue:
                    self._drained.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    if self._down is not None and not await _answers(url):
                        raise ConnectionError(self._down)
                    if client is None:
                        client = await _connect(url)
                    await self._emit(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The client keeps what it could not confirm and sends it again once it
                    # reconnects; the event is ours to send again too (the server keeps one
                    # event per id).
                    self._outage(url, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MOST)
                    continue
                if self._down is not None:
                    logger.warning(
                        "dropflow events reach the Prefect API at %s again; sending the %d "
                        "kept meanwhile (%d dropped in all)",
                        url,
                        len(self._queue) + 1,
                        self.dropped,
                    )
                    self._down, delay = None, RETRY_FIRST
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), _CLOSE_TIMEOUT)

    async def _emit(self, client: EventsClient) -> None:
        from prefect.events import Event

        fields = self._queue[0]
        try:
            event = Event(**fields)
        except Exception as exc:  # a bug must cost one event, not the sender
            logger.exception("dropflow event %s dropped: %s", fields.get("event"), exc)
            self._queue.popleft()
            return
        await client.emit(event)
        if self._queue and self._queue[0] is fields:
            self._queue.popleft()
        self.sent += 1

    def _outage(self, url: str, exc: Exception) -> None:
        if self._down is None:
            logger.warning(
                "dropflow events cannot reach the Prefect API at %s (%s); keeping up to %d "
                "and sending them when it answers",
                url,
                exc,
                self._buffer,
            )
        self._down = str(exc)


async def _connect(url: str) -> EventsClient:
    from prefect.events import get_events_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The client takes its URL (and credentials) from the settings when it is made.
    with temporary_settings({PREFECT_API_URL: url}):
        client = get_events_client(reconnection_attempts=_RECONNECTS)
    return await client.__aenter__()


async def _answers(url: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        client = get_client()
    async with client:
        return await client.api_healthcheck() is None


class _WithEvents:
    """A runner whose start starts the events' sender, at its API, and whose close flushes
    them first: the embedded server stops with the runner."""

    def __init__(self, runner: Runner, events: JobEvents) -> None:
        self.runner = runner
        self.events = events
        self.health = runner.health

    async def start(self) -> str:
        description = await self.runner.start()
        url = getattr(self.runner, "api_url", None)
        if url:
            self.events.start(url)
        else:
            logger.warning("no dropflow events: the runner named no Prefect API")
        return description

    async def run(self, request: RunRequest) -> RunOutcome:
        return await self.runner.run(request)

    async def close(self) -> None:
        try:
            await self.events.aclose()
        finally:
            await self.runner.close()


def with_events(runner: Runner, vitals: Vitals) -> Runner:
    """`runner`, sending each job's steps as Prefect events to its API (its `api_url`, known
    once it started)."""
    events = JobEvents()
    vitals.observers.append(events)
    return _WithEvents(runner, events)

"""The service's Prometheus metrics, in a registry of their own (`prometheus_client`'s global
one would add the process's and Python's metrics, and every test's metrics to the next's).

The names are a contract (docs/operating.md#metrics):

- counted as jobs finish, by a `JobObserver` on the service's vitals:
  `dropflow_jobs_total{route,status}`, `dropflow_job_duration_seconds{route,flow}` (a job that
  ran: its result's `duration_s`), `dropflow_drop_to_result_seconds{route}` (from the job
  file's mtime to its published result);
- read from a snapshot of the vitals at each scrape: `dropflow_jobs_in_flight{route}`,
  `dropflow_inbox_waiting{route}`, `dropflow_oldest_waiting_seconds{route}`,
  `dropflow_runner_up` and `dropflow_owner`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watcher.service.vitals import JobSeen, Vitals

__all__ = ["BUCKETS", "STATUSES", "Metrics"]

STATUSES = ("completed", "canceled", "error")
"""A result's statuses: each route's counter shows all three from 0."""

BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, math.inf)
"""Seconds, for both histograms: a job takes from a fraction of a second (a refused file) to
an hour (`max_timeout`'s default)."""


class Metrics:
    """The metrics of one service; `exposition` renders them for a scrape."""

    def __init__(self, vitals: Vitals) -> None:
        """Attach to `vitals`: told each job's steps from now on, and read at each scrape."""
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "dropflow_jobs_total",
            "Jobs whose result was published since the service started, by route and status.",
            ["route", "status"],
            registry=None,
        )
        self.duration = Histogram(
            "dropflow_job_duration_seconds",
            "How long the jobs that ran took, from their run slot to their result "
            "(the result's duration_s).",
            ["route", "flow"],
            buckets=BUCKETS,
            registry=None,
        )
        self.drop_to_result = Histogram(
            "dropflow_drop_to_result_seconds",
            "From a job file's drop (its mtime) to its published result.",
            ["route"],
            buckets=BUCKETS,
            registry=None,
        )
        self.registry.register(_Counted([self.jobs, self.duration, self.drop_to_result]))
        self.registry.register(_Gauges(vitals))
        for route in vitals.snapshot().routes:
            for status in STATUSES:
                self.jobs.labels(route, status)
        self._flows: dict[str, str] = {}  # claim id -> flow, for the jobs that started
        vitals.observers.append(self)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics as a scrape gets them: (body, content type), in the format `accept` (an
        HTTP Accept header) prefers: Prometheus text, or OpenMetrics."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- watcher.service.vitals.JobObserver, on the service's event loop -------------------

    def received(self, job: JobSeen) -> None:
        pass

    def started(self, job: JobSeen, flow: str) -> None:
        self._flows[job.claim_id] = flow

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        self.jobs.labels(job.route, str(result.get("status", "error"))).inc()
        flow = self._flows.pop(job.claim_id, None)
        duration = result.get("duration_s")
        # Only a job that ran here: a refused one never started, a recovered one whose result
        # was staged before a restart ran in the service before.
        if flow is not None and isinstance(duration, int | float):
            self.duration.labels(job.route, flow).observe(duration)
        if job.dropped_at is not None:
            self.drop_to_result.labels(job.route).observe(max(0.0, time.time() - job.dropped_at))


class _Counted(Collector):
    """The counter and histograms without their `_created` samples: in Prometheus text those
    are series of their own (`dropflow_jobs_created`), names outside the contract."""

    def __init__(self, metrics: list[Counter | Histogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class _Gauges(Collector):
    """What the vitals say now, read at each scrape."""

    def __init__(self, vitals: Vitals) -> None:
        self.vitals = vitals

    def collect(self) -> Iterator[Metric]:
        snap = self.vitals.snapshot()
        in_flight = GaugeMetricFamily(
            "dropflow_jobs_in_flight", "Jobs whose flow is running.", labels=["route"]
        )
        waiting = GaugeMetricFamily(
            "dropflow_inbox_waiting",
            "Jobs claimed and waiting for a run slot or the runner, plus files in the inbox "
            "still being written.",
            labels=["route"],
        )
        oldest = GaugeMetricFamily(
            "dropflow_oldest_waiting_seconds",
            "Seconds since the oldest waiting job was dropped (its mtime); 0 when none waits.",
            labels=["route"],
        )
        for name, route in snap.routes.items():
            in_flight.add_metric([name], route.in_flight)
            waiting.add_metric([name], route.waiting)
            oldest.add_metric([name], route.oldest_waiting_s or 0.0)
        yield in_flight
        yield waiting
        yield oldest
        yield GaugeMetricFamily(
            "dropflow_runner_up",
            "1 while the runner can run jobs (the Prefect server answers), else 0.",
            value=int(snap.runner_up),
        )
        yield GaugeMetricFamily(
            "dropflow_owner",
            "1 while this service owns its folders, 0 while it is a standby (or starting).",
            value=int(snap.owner),
        )

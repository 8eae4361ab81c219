"""The Prometheus metrics as a scrape reads them, from vitals the test drives."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from watcher.service.metrics import Metrics
from watcher.service.vitals import JobSeen, Vitals

CONTRACT = {
    "dropflow_jobs": "counter",  # exposed as dropflow_jobs_total
    "dropflow_jobs_in_flight": "gauge",
    "dropflow_inbox_waiting": "gauge",
    "dropflow_oldest_waiting_seconds": "gauge",
    "dropflow_job_duration_seconds": "histogram",
    "dropflow_drop_to_result_seconds": "histogram",
    "dropflow_runner_up": "gauge",
    "dropflow_owner": "gauge",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _job(route: str, claim: str, dropped_at: float | None) -> JobSeen:
    return JobSeen(route, claim, f"{claim}.yaml", f"{claim}.yaml", dropped_at)


def test_the_contract_names_and_every_route_status_from_zero() -> None:
    vitals = Vitals(["a", "b"])
    text = Metrics(vitals).exposition()[0].decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    # Exactly the contract: no `_created` series beside the counter and the histograms.
    assert families == CONTRACT
    got = samples(text)
    for route in ("a", "b"):
        for status in ("completed", "canceled", "error"):
            assert got[("dropflow_jobs_total", (("route", route), ("status", status)))] == 0
        assert got[("dropflow_jobs_in_flight", (("route", route),))] == 0
        assert got[("dropflow_oldest_waiting_seconds", (("route", route),))] == 0
    assert got[("dropflow_runner_up", ())] == 0
    assert got[("dropflow_owner", ())] == 0


def test_jobs_are_counted_and_timed_as_they_finish_and_gauges_read_now() -> None:
    vitals = Vitals(["a", "b"])
    metrics = Metrics(vitals)
    vitals.watch_route("a", lambda: 2)  # two files still settling in a's inbox
    now = time.time()
    ran = [_job("a", "r1", now - 30), _job("a", "r2", now - 30), _job("b", "r3", None)]
    for job, flow in zip(ran, ("wait", "report", "wait"), strict=True):
        vitals.received(job)
        vitals.started(job, flow)
    refused, waiting = _job("a", "bad", now - 3), _job("a", "w", now - 100)
    vitals.received(refused)
    vitals.received(waiting)
    vitals.finished(ran[0], {"status": "completed", "duration_s": 0.2})
    vitals.finished(ran[1], {"status": "canceled", "duration_s": 7.0})
    vitals.finished(refused, {"status": "error", "duration_s": 0.0, "flow": "wait"})
    vitals.set_phase("serving")
    vitals.runner_up = lambda: (True, "")

    got = samples(metrics.exposition()[0].decode())
    a, b = (("route", "a"),), (("route", "b"),)
    assert got[("dropflow_jobs_total", (*a, ("status", "completed")))] == 1
    assert got[("dropflow_jobs_total", (*a, ("status", "canceled")))] == 1
    assert got[("dropflow_jobs_total", (*a, ("status", "error")))] == 1
    assert got[("dropflow_jobs_total", (*b, ("status", "completed")))] == 0
    # Only the jobs that ran are timed, by their flow; the refused one is not.
    wait, report = ("flow", "wait"), ("flow", "report")
    assert got[("dropflow_job_duration_seconds_count", (wait, *a))] == 1
    assert got[("dropflow_job_duration_seconds_sum", (wait, *a))] == 0.2
    assert got[("dropflow_job_duration_seconds_bucket", (wait, ("le", "0.25"), *a))] == 1
    assert got[("dropflow_job_duration_seconds_bucket", (wait, ("le", "0.1"), *a))] == 0
    assert got[("dropflow_job_duration_seconds_count", (report, *a))] == 1
    assert got[("dropflow_job_duration_seconds_sum", (report, *a))] == 7.0
    # From the drop to the result: every finished job with a drop time.
    assert got[("dropflow_drop_to_result_seconds_count", a)] == 3
    assert got[("dropflow_drop_to_result_seconds_bucket", (("le", "10.0"), *a))] == 1
    assert got[("dropflow_drop_to_result_seconds_bucket", (("le", "60.0"), *a))] == 3
    assert ("dropflow_drop_to_result_seconds_count", b) not in got
    # Gauges: what the vitals hold at the scrape.
    assert got[("dropflow_jobs_in_flight", b)] == 1
    assert got[("dropflow_jobs_in_flight", a)] == 0
    assert got[("dropflow_inbox_waiting", a)] == 3  # one claimed, two settling
    assert 100 <= got[("dropflow_oldest_waiting_seconds", a)] < 200
    assert got[("dropflow_runner_up", ())] == 1
    assert got[("dropflow_owner", ())] == 1


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    body, content_type = Metrics(Vitals(["a"])).exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    body, content_type = Metrics(Vitals(["a"])).exposition("")
    assert content_type.startswith("text/plain; version=0.0.4")

"""End to end: `polling: true` (watchdog's PollingObserver, for network drives)."""

from __future__ import annotations

from tests.conftest import ServiceFactory
from tests.test_writers import run_the_appending_writer

# No periodic rescan within the test: only the polling observer can find the files.
POLLING = {"polling": True, "settle_seconds": 1.0, "rescan_interval": 3600}


def test_polling_runs_a_dropped_job(service: ServiceFactory) -> None:
    svc = service(POLLING)
    assert "inbox observer: PollingObserver; files written in place are taken once" in svc.log()
    svc.drop("polled.yaml", "timeout: 5\nsleep: 0\nname: polled\n")
    result = svc.wait_result("polled.yaml")
    assert result["status"] == "completed", result
    assert result["name"] == "polled"


def test_polling_waits_out_a_writer_that_appends_in_three_goes(service: ServiceFactory) -> None:
    # No close events here: the settle time (longer than the writer's 0.3 s pauses) decides.
    svc = service(POLLING)
    run_the_appending_writer(svc)

"""End to end: `polling: true` (watchdog's PollingObserver, for network drives)."""

from __future__ import annotations

import subprocess

from tests.conftest import ServiceFactory
from tests.test_writers import APPENDING_WRITER

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
    subprocess.run(["bash", "-c", APPENDING_WRITER], cwd=svc.root, check=True, timeout=30)
    result = svc.wait_result("multi.yaml")
    found = (result["status"], result.get("timeout"), result.get("sleep"), result.get("name"))
    results = sorted(p.name for p in svc.results.iterdir())
    assert found == ("completed", 5, 0.1, "appended"), (result, results)
    assert results == ["multi.result.yaml"]

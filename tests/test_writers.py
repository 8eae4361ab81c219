"""End to end: writers that do not write a job file in one go, against `dropflow run`."""

from __future__ import annotations

import subprocess

from tests.conftest import ServiceFactory
from tests.harness import ServiceProcess

# The writer: three open/close cycles on the file in the inbox itself.
APPENDING_WRITER = (
    "echo 'timeout: 5' > inbox/multi.yaml; sleep 0.3; "
    "echo 'sleep: 0.1' >> inbox/multi.yaml; sleep 0.3; "
    "echo 'name: appended' >> inbox/multi.yaml"
)


def run_the_appending_writer(svc: ServiceProcess) -> None:
    """Run the writer; check it gave one job, from the whole file, and nothing else."""
    subprocess.run(["bash", "-c", APPENDING_WRITER], cwd=svc.root, check=True, timeout=30)
    result = svc.wait_result("multi.yaml")
    # The file it ran was the whole file: taken after the writer's last close, not the first.
    found = (result["status"], result.get("timeout"), result.get("sleep"), result.get("name"))
    results = sorted(p.name for p in svc.results.iterdir())
    assert found == ("completed", 5, 0.1, "appended"), (result, results)
    # So nothing was left to make a second job of: the writer had finished before the take.
    assert results == ["multi.result.yaml"]


def test_a_writer_that_appends_in_three_goes_gives_one_job(service: ServiceFactory) -> None:
    svc = service()
    run_the_appending_writer(svc)
    assert list(svc.inbox.iterdir()) == []
    assert svc.log().count("job started: multi.yaml") == 1

"""`dropflow status` counts from the service's ledger: against a real `dropflow run`, its counts
match a count made by reading every result file (what `status` did before the ledger)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ServiceFactory
from watcher.folders import ledger

STATUSES = ("completed", "canceled", "error")


def _read_every_file(results: Path, now: float) -> dict[str, dict[str, int]]:
    """The last hour's and day's results by status, from every result file."""
    counts = {window: dict.fromkeys(STATUSES, 0) for window in ("last_hour", "last_day")}
    for path in results.glob("*.result*.yaml"):
        age = now - path.stat().st_mtime
        status = yaml.safe_load(path.read_text())["status"]
        if age <= 24 * 3600:
            counts["last_day"][status] += 1
        if age <= 3600:
            counts["last_hour"][status] += 1
    return counts


def test_status_counts_match_the_result_files_of_a_real_service(
    service: ServiceFactory,
) -> None:
    svc = service({"defaults": {"timeout": 5, "sleep": 0}}, start=False)
    # A result of a service from before the ledger (an upgrade): only in the files.
    svc.results.mkdir(parents=True)
    before = svc.results / "older.result.yaml"
    before.write_text(yaml.safe_dump({"job": "older.yaml", "status": "error", "claim_id": "x"}))
    os.utime(before, (time.time() - 7200, time.time() - 7200))
    svc.start()
    jobs = {
        **{f"ok{i}.yaml": "sleep: 0\n" for i in range(3)},
        **{f"late{i}.yaml": "timeout: 1\nsleep: 3\n" for i in range(2)},
        **{f"bad{i}.yaml": "timeout: ten\n" for i in range(2)},
    }
    for name, text in jobs.items():
        svc.drop(name, text)
    got = {name: svc.wait_result(name, timeout=60)["status"] for name in jobs}
    assert sorted(got.values()) == sorted(["completed"] * 3 + ["canceled"] * 2 + ["error"] * 2)
    lines = list(ledger.lines_since(svc.processing, time.time() - 3600))
    assert len(lines) == len(jobs), lines

    done = subprocess.run(
        [sys.executable, "-m", "watcher", "status", "-c", "config.yaml", "--json"],
        cwd=svc.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)["results"]
    expected = _read_every_file(svc.results, time.time())
    assert expected["last_day"] == {"completed": 3, "canceled": 2, "error": 3}
    assert {w: results[w] for w in ("last_hour", "last_day")} == expected
    by_time = sorted(svc.results.glob("*.result*.yaml"), key=lambda p: -p.stat().st_mtime)
    assert [r["file"] for r in results["newest"]] == [p.name for p in by_time[:10]]

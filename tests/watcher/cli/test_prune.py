"""`dropflow prune`: retention now, beside a running service; `--dry-run` lists and keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ServiceFactory

DAY = 86400.0


def _old(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def _prune(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", "prune", "--config", str(root / "config.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_prune_lists_with_dry_run_then_removes_the_same_paths_beside_a_service(
    service: ServiceFactory, tmp_path: Path
) -> None:
    svc = service({"runner": "direct", "results_days": 1, "archive_days": 1})
    svc.wait_for_log("retention: removed 0 result(s)")  # its start run: done before ours
    old_result = _old(svc.results / "old.result.2.yaml", 2)
    _old(svc.results / "young.result.yaml", 0.5)
    _old(svc.results / "old-notes.txt", 2)
    old_job = _old(svc.archive / "old.yaml", 2)
    dated = _old(svc.archive / "2020" / "01" / "01" / "sub" / "dated.yaml", 2)
    before = (_tree(svc.results), _tree(svc.archive))

    dry = _prune(tmp_path, "--dry-run")

    assert dry.returncode == 0, dry.stderr
    day = svc.archive / "2020" / "01" / "01"
    listed = [
        f"would remove result: {old_result}",
        f"would remove archived job file: {dated}",
        f"would remove archived job file: {old_job}",
        f"would remove empty date folder: {day / 'sub'}",
        f"would remove empty date folder: {day}",
        f"would remove empty date folder: {day.parent}",
        f"would remove empty date folder: {day.parent.parent}",
        "would remove 1 result(s), 2 archived job file(s), 4 empty date folder(s)",
    ]
    assert dry.stdout.splitlines() == listed
    assert (_tree(svc.results), _tree(svc.archive)) == before  # nothing removed

    real = _prune(tmp_path, "--json")

    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert [p["path"] for p in report["paths"]] == [line.split(": ", 1)[1] for line in listed[:-1]]
    assert report["routes"] == {
        "default": {
            "results_days": 1,
            "archive_days": 1,
            "results": 1,
            "archived": 2,
            "folders": 4,
            "kept_for_waiters": 0,
        }
    }
    assert _tree(svc.results) == ["old-notes.txt", "young.result.yaml"]
    assert _tree(svc.archive) == []
    assert svc.proc is not None and svc.proc.poll() is None  # the service serves on


def test_bad_use_of_prune_is_named_on_stderr_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("results_days: 0.01\n")
    bad = _prune(tmp_path)
    assert bad.returncode == 2
    assert "results_days: Value error, must be 0 (keep for ever) or at least 1/24" in bad.stderr
    (tmp_path / "config.yaml").write_text("results_days: 1\n")
    bad = _prune(tmp_path, "--now")
    assert bad.returncode == 2 and "unrecognized arguments: --now" in bad.stderr
    (tmp_path / "config.yaml").write_text("")
    kept = _prune(tmp_path)
    assert kept.returncode == 0
    assert kept.stdout == (
        "results_days and archive_days are both 0 (keep for ever): nothing to do\n"
    )

"""The pure parts of `make chaos ARGS="--kill-server"` (tests/chaos_server.py)."""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.chaos_server import Completions, Plan


@pytest.mark.parametrize(("jobs", "kills"), [(200, 20), (20, 2), (4, 2), (2, 1), (10, 5), (7, 3)])
@pytest.mark.parametrize("seed", range(20))
def test_every_kill_comes_within_its_cycle_with_jobs_left_after_the_last(
    jobs: int, kills: int, seed: int
) -> None:
    plan = Plan.draw(jobs, kills, random.Random(seed))
    starts = [0, *plan.ends[:-1]]
    for start, end, at in zip(starts, plan.ends, plan.kill_at, strict=True):
        # Drops stop at `end` until the kill: a kill past it would never come.
        assert start < at <= end
    assert plan.ends[-1] < jobs


def _result(folder: Path, job: str, status: str, finished: float) -> None:
    stamp = datetime.fromtimestamp(finished).astimezone().isoformat(timespec="milliseconds")
    data = {"job": job, "status": status, "message": "", "finished_at": stamp}
    (folder / f"{Path(job).stem}.result.yaml").write_text(yaml.safe_dump(data))


def test_only_a_completed_flow_that_finished_after_the_kill_counts(tmp_path: Path) -> None:
    kill = time.time()
    _result(tmp_path, "before.yaml", "completed", kill - 1)  # published after the kill
    _result(tmp_path, "error.yaml", "error", kill + 1)
    completions = Completions(tmp_path)
    completions.scan()
    assert completions.jobs == {"before.yaml", "error.yaml"}
    assert completions.first_after(kill, time.time()) is None
    _result(tmp_path, "after.yaml", "completed", kill + 0.5)
    completions.scan()
    seen = completions.first_after(kill, time.time())
    assert seen is not None and seen > kill
    assert completions.first_after(kill, kill) is None  # seen after `until`

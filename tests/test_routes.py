"""End to end: routes, with real `dropflow run` processes (docs/routes.md)."""

from __future__ import annotations

import itertools
import os
import random
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import ROOT, ServiceProcess, wait_until
from watcher.folders.archive import claimed_day

# docs/routes.md shows this config: keep the two the same.
THREE_ROUTES: dict[str, Any] = {
    "max_concurrent_jobs": 4,
    "results": "./results",
    "archive": "./archive",
    "defaults": {"timeout": 10, "sleep": 0},
    "flows": {"wait": "flows.wait:wait", "csv_summary": "examples/csv_summary.py:csv_summary"},
    "files_dir": "./files",
    "routes": {
        "invoices": {
            "inbox": "./hot/invoices",
            "results": "./out/invoices",
            "archive": "./done/invoices",
            "flow": "csv_summary",
            "flows": ["csv_summary"],
            "defaults": {"timeout": 60, "parameters": {"delimiter": ";"}},
            "priority": 10,
            "max_concurrent_jobs": 2,
        },
        "scans": {
            "inbox": "./hot/scans",
            "recursive": True,
            "max_depth": 3,
            "order": "name",
        },
        "slow": {
            "inbox": "./hot/slow",
            "defaults": {"timeout": 30, "sleep": [1, 2]},
            "order": "newest",
        },
    },
}


def _drop(root: Path, target: Path, content: str) -> Path:
    """Write elsewhere, then rename in (a careful writer)."""
    staging = root / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / target.name
    tmp.write_text(content)
    os.rename(tmp, target)
    return target


def _result(svc: ServiceProcess, path: Path, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if svc.proc is not None and svc.proc.poll() is not None and not path.exists():
            raise RuntimeError(f"service exited ({svc.proc.returncode}):\n{svc.log()}")
        return yaml.safe_load(path.read_text()) if path.exists() else None

    try:
        found: dict[str, Any] = wait_until(ready, timeout)
    except TimeoutError:
        raise TimeoutError(f"no result at {path} in {timeout}s:\n{svc.log()}") from None
    return found


def _archived(path: Path | bytes) -> None:
    """Wait for a job file to be archived: its result is published first, then it is moved."""
    wait_until(lambda: os.path.exists(path), 10)


def test_the_docs_config_is_the_one_tested() -> None:
    text = (ROOT / "docs/routes.md").read_text()
    block = text.split("## A real config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == THREE_ROUTES


def test_three_routes_each_run_their_own_flow_defaults_and_folders(
    service: ServiceFactory, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files/sales.csv").write_text("region;units\nnorth;3\nsouth;5\n")
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples/csv_summary.py", tmp_path / "examples/csv_summary.py")
    svc = service(THREE_ROUTES)
    for name in ("invoices", "scans", "slow"):
        svc.wait_for_log(f"watching {tmp_path / 'hot' / name} (route {name}, ")

    # invoices: its own flow, its default parameters, its timeout, its own folders.
    _drop(tmp_path, tmp_path / "hot/invoices/march.yaml", "parameters: {path: sales.csv}\n")
    # scans: a subfolder made while the service runs, with a job dropped in it at once.
    deep = tmp_path / "hot/scans/2026/12/06"
    deep.mkdir(parents=True)
    (deep / "page.yaml").write_text("name: page one\n")
    # slow: its own sleep and timeout.
    _drop(tmp_path, tmp_path / "hot/slow/big.yaml", "{}\n")

    invoice = _result(svc, tmp_path / "out/invoices/march.result.yaml")
    assert invoice["status"] == "completed", invoice
    assert invoice["route"] == "invoices"
    assert (invoice["flow"], invoice["timeout"]) == ("csv_summary", 60)
    assert invoice["return_value"]["rows"] == 2  # split on ';', the route's default
    assert invoice["return_value"]["columns"] == ["region", "units"]
    # Filed by the day it was claimed (the default `archive_layout: daily`), then its subfolder.
    _archived(tmp_path / "done/invoices" / claimed_day(invoice["claim_id"]) / "march.yaml")

    page = _result(svc, tmp_path / "results/scans/2026/12/06/page.result.yaml")
    assert page["status"] == "completed", page
    assert (page["route"], page["subfolder"], page["flow"]) == ("scans", "2026/12/06", "wait")
    assert (page["timeout"], page["sleep"]) == (10, 0)
    _archived(tmp_path / "archive/scans" / claimed_day(page["claim_id"]) / "2026/12/06/page.yaml")
    assert deep.is_dir() and os.listdir(deep) == []  # the emptied subfolder is left alone

    big = _result(svc, tmp_path / "results/slow/big.result.yaml")
    assert big["status"] == "completed", big
    assert big["route"] == "slow" and big["timeout"] == 30 and 1 <= big["sleep"] <= 2
    _archived(tmp_path / "archive/slow" / claimed_day(big["claim_id"]) / "big.yaml")

    # A flow the route does not take is an error result naming the route's flows.
    _drop(tmp_path, tmp_path / "hot/invoices/wrong.yaml", "flow: wait\nsleep: 0\n")
    wrong = _result(svc, tmp_path / "out/invoices/wrong.result.yaml")
    assert wrong["status"] == "error" and "registered: csv_summary" in wrong["message"]
    assert svc.stop() == 0


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_a_subfolder_made_while_running_is_watched_at_once(
    service: ServiceFactory, tmp_path: Path, polling: bool
) -> None:
    config = {
        "runner": "direct",
        "polling": polling,
        "settle_seconds": 0.2,
        "defaults": {"timeout": 5, "sleep": 0},
        "routes": {
            "tree": {"inbox": "./in", "recursive": True, "max_depth": 3},
        },
    }
    svc = service(config)
    # mkdir -p and a file written into the deepest folder at once, then one too deep, one in a
    # dotfolder, and one behind a symlinked folder: only the first is a job.
    deep = tmp_path / "in/a/b/c"
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("{}\n")
    (tmp_path / "in/a/b/c/d").mkdir()
    (tmp_path / "in/a/b/c/d/too-deep.yaml").write_text("{}\n")
    (tmp_path / "in/.hidden").mkdir()
    (tmp_path / "in/.hidden/secret.yaml").write_text("{}\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/linked.yaml").write_text("{}\n")
    (tmp_path / "in/link").symlink_to(tmp_path / "elsewhere")
    odd = os.path.join(os.fsencode(tmp_path / "in"), b"odd\xff")  # not UTF-8
    os.mkdir(odd)
    with open(os.path.join(odd, b"job.yaml"), "w") as job:
        job.write("{}\n")
    (tmp_path / "in/last.yaml").write_text("{}\n")

    x = _result(svc, tmp_path / "results/tree/a/b/c/x.result.yaml", 30)
    assert (x["status"], x["subfolder"]) == ("completed", "a/b/c")
    _result(svc, tmp_path / "results/tree/last.result.yaml", 30)
    svc.wait_for_log("job finished: last.yaml")
    assert (tmp_path / "in/a/b/c/d/too-deep.yaml").exists()
    assert (tmp_path / "in/.hidden/secret.yaml").exists()
    assert (tmp_path / "elsewhere/linked.yaml").exists()
    # The odd subfolder's job gets an error result saying why, in the same relative folder.
    odd_result = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"results/tree/odd\xff")))
    refused = _result(svc, odd_result / "job.result.yaml", 30)
    assert refused["status"] == "error" and "is not UTF-8 text" in refused["message"]
    day = tmp_path / "archive/tree" / claimed_day(refused["claim_id"])
    _archived(os.path.join(os.fsencode(day), b"odd\xff", b"job.yaml"))
    done = sorted(
        p.relative_to(tmp_path / "results/tree").as_posix()
        for p in (tmp_path / "results/tree").rglob("*.yaml")
    )
    assert done == ["a/b/c/x.result.yaml", "last.result.yaml", "odd\udcff/job.result.yaml"]
    assert svc.stop() == 0


def test_a_backlog_runs_by_priority_then_in_its_routes_order(
    service: ServiceFactory, tmp_path: Path
) -> None:
    config = {
        "max_concurrent_jobs": 2,
        "defaults": {"timeout": 10, "sleep": 0},
        # low first: its backlog is scanned and asks for slots first; priority must win.
        "routes": {
            "low": {"inbox": "./low", "order": "oldest", "max_concurrent_jobs": 1},
            "high": {"inbox": "./high", "priority": 5},
        },
    }
    (tmp_path / "high").mkdir()
    (tmp_path / "low").mkdir()
    # 30 files whose names are not in the order of their mtimes.
    rng = random.Random(18)
    names = [f"job{i:02d}.yaml" for i in range(30)]
    by_age = names[:]
    rng.shuffle(by_age)
    base = 1_700_000_000
    for age, name in enumerate(by_age):
        path = tmp_path / "low" / name
        path.write_text("{}\n")
        os.utime(path, (base + age, base + age))
    for i in range(6):
        (tmp_path / f"high/urgent{i}.yaml").write_text("{}\n")
        os.utime(tmp_path / f"high/urgent{i}.yaml", (base + 100, base + 100))
    svc = service(config)

    low = [_result(svc, tmp_path / "results/low" / f"{Path(n).stem}.result.yaml") for n in by_age]
    high = [_result(svc, tmp_path / f"results/high/urgent{i}.result.yaml") for i in range(6)]
    assert all(r["status"] == "completed" for r in low + high)

    def started(result: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(str(result["started_at"]))

    def finished(result: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(str(result["finished_at"]))

    # Priority: no low job started before every high one had a slot.
    assert min(started(r) for r in low) >= max(started(r) for r in high)
    # Order: the low route (cap 1) ran its backlog oldest first, one at a time.
    assert [r["job"] for r in sorted(low, key=started)] == by_age
    ran = sorted(low, key=started)
    for before, after in itertools.pairwise(ran):
        assert finished(before) <= started(after)
    assert svc.stop() == 0


def test_overlapping_routes_are_refused_at_start_naming_both(
    service: ServiceFactory, tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "runner": "direct",
        "routes": {"a": {"inbox": "./in", "recursive": True}, "b": {"inbox": "./in/sub"}},
    }
    svc = service(config, start=False).start(wait=False)
    assert svc.proc is not None and svc.proc.wait(timeout=60) == 2
    svc.output.join()
    assert f"routes: b's inbox ({tmp_path / 'in/sub'}) is inside a's inbox ({tmp_path / 'in'})" in (
        svc.log()
    )
    # The same folder under two paths (a symbolic link) is the same inbox.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").symlink_to(tmp_path / "one")
    config = {"runner": "direct", "routes": {"a": {"inbox": "./one"}, "b": {"inbox": "./two"}}}
    other = service(config, start=False).start(wait=False)
    assert other.proc is not None and other.proc.wait(timeout=60) == 2
    other.output.join()
    assert f"routes: a and b have the same inbox ({tmp_path / 'one'})" in other.log()


def test_a_service_whose_routes_overlap_a_running_one_is_its_standby(
    service: ServiceFactory, tmp_path: Path
) -> None:
    first = {
        "runner": "direct",
        "routes": {"a": {"inbox": "./a"}, "b": {"inbox": "./b"}},
    }
    owner = service(first)
    second = {"runner": "direct", "routes": {"b": {"inbox": "./b"}, "c": {"inbox": "./c"}}}
    refused = service(second, start=False).start(wait=False, args=("--no-standby",))
    assert refused.proc is not None and owner.proc is not None
    assert refused.proc.wait(timeout=60) == 2
    refused.output.join()
    assert f"is served by another dropflow (pid {owner.proc.pid} on " in refused.log()
    standby = service(second, start=False).start(wait=False)
    standby.wait_for_log("standby:")
    assert not (tmp_path / "c").exists() or "watching" not in standby.log()
    owner.stop()
    standby.wait_for_log("taking over", timeout=15)
    _drop(tmp_path, tmp_path / "c/late.yaml", "sleep: 0\n")
    assert _result(standby, tmp_path / "results/c/late.result.yaml")["route"] == "c"

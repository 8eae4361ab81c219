from __future__ import annotations

import os
import stat
import time
from itertools import islice
from pathlib import Path

import yaml

from watcher.folders.durable import TEMP_PREFIX, write_atomic
from watcher.folders.results import Result, dump, publish, read_result, result_names


def _result(job: str = "job.yaml", claim_id: str = "c1") -> Result:
    return {"job": job, "status": "completed", "message": "ok", "claim_id": claim_id, "attempt": 1}


def _staged(tmp_path: Path, result: Result) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return write_atomic(staging, dump(result))


def test_result_names_never_collide_between_jobs() -> None:
    assert list(islice(result_names("a.yaml"), 3)) == [
        "a.result.yaml",
        "a.result.2.yaml",
        "a.result.3.yaml",
    ]
    seen: set[str] = set()
    for job in ("a.yaml", "a.result.yaml", "a.result.2.yaml", "a.2.yaml", "a.yml"):
        names = set(islice(result_names(job), 5))
        if job != "a.yml":  # a.yaml and a.yml are the same stem: they share the sequence
            assert not names & seen, job
        seen |= names


def test_long_names_are_shortened_to_fit_the_filesystem() -> None:
    name = "é" * 120 + ".yaml"  # 240 bytes of stem
    first = next(result_names(name))
    assert len(first.encode()) < 255


def test_publish_is_atomic_and_keeps_earlier_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    one = publish(results, _staged(tmp_path, _result(claim_id="c1")), "job.yaml", "c1")
    two = publish(results, _staged(tmp_path, _result(claim_id="c2")), "job.yaml", "c2")
    assert (one.name, two.name) == ("job.result.yaml", "job.result.2.yaml")
    assert read_result(one) == {**_result(claim_id="c1")}
    assert read_result(two)["claim_id"] == "c2"  # type: ignore[index]
    assert not [p for p in results.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert stat.S_IMODE(one.stat().st_mode) == 0o644


def test_a_result_staged_long_ago_is_published_with_the_time_of_publishing(
    tmp_path: Path,
) -> None:
    # Staged before a long outage, published at the restart: retention must not take it as old.
    results = tmp_path / "results"
    results.mkdir()
    staged = _staged(tmp_path, _result(claim_id="c1"))
    os.utime(staged, (1_000_000_000, 1_000_000_000))
    before = time.time() - 1
    published = publish(results, staged, "job.yaml", "c1")
    assert published.stat().st_mtime >= before


def test_publish_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not touch")
    (results / "job.result.yaml").symlink_to(secret)
    path = publish(results, _staged(tmp_path, _result()), "job.yaml", "c1")
    assert path.name == "job.result.2.yaml"
    assert secret.read_text() == "do not touch"


def test_recovery_finds_its_own_result_instead_of_writing_a_second(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    staged = _staged(tmp_path, _result(claim_id="c9"))
    first = publish(results, staged, "job.yaml", "c9")
    again = publish(results, staged, "job.yaml", "c9", recovering=True)
    assert again == first
    assert len(list(results.iterdir())) == 1


def test_dump_is_plain_yaml_with_unicode(tmp_path: Path) -> None:
    result = _result(job="été\nnuit.yaml")
    assert yaml.safe_load(dump(result)) == result


def test_write_atomic_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = write_atomic(tmp_path, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

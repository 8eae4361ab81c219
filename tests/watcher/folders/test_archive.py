"""Finding a finished job's archived file again from its result (`find_archived`), with the
claims and archive names the service really makes: real folders, a real `ClaimStore`; and the
date folder a claim's id gives under the `daily` layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.folders.archive import archive_folder, claimed_day, find_archived, unique_archive_name
from watcher.folders.claims import Claim, ClaimStore
from watcher.jobs.submission import new_id, tagged

MAX_BYTES = 32768


@pytest.fixture
def store(tmp_path: Path) -> ClaimStore:
    for name in ("inbox", "processing", "archive"):
        (tmp_path / name).mkdir()
    return ClaimStore(tmp_path / "processing", tmp_path / "archive", tmp_path / "inbox")


def _run(store: ClaimStore, relative: str, data: bytes) -> Claim:
    """Drop a job at `inbox/<relative>`, claim it and archive it, as the service does."""
    assert store.inbox is not None
    path = store.inbox / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    claim = store.claim(path)
    assert claim is not None
    store.finish(claim)
    return claim


def _find(store: ClaimStore, claim: Claim, submission: str | None) -> Path | None:
    return find_archived(
        store.archive_dir, claim.subfolder, claim.name, claim.id, submission, MAX_BYTES
    )


def test_each_job_of_one_name_is_found_under_the_name_it_got(store: ClaimStore) -> None:
    ids = [new_id() for _ in range(3)]
    claims = [_run(store, "a.yaml", tagged(b"timeout: 1\n", sid)) for sid in ids]
    names = [store.archive_dir / "a.yaml"] + [
        store.archive_dir / f"a.{claim.id}.yaml" for claim in claims[1:]
    ]
    assert sorted(store.archive_dir.iterdir()) == sorted(names)
    for claim, sid, name in zip(claims, ids, names, strict=True):
        assert _find(store, claim, sid) == name
        assert ("submission: " + sid).encode() in name.read_bytes()


def test_a_job_from_a_subfolder_is_found_in_the_same_subfolder(store: ClaimStore) -> None:
    first = _run(store, "2026/12/a.yaml", b"timeout: 1\n")
    second = _run(store, "2026/12/a.yaml", b"timeout: 2\n")
    folder = store.archive_dir / "2026/12"
    assert _find(store, first, None) == folder / "a.yaml"
    assert _find(store, second, None) == folder / unique_archive_name("a.yaml", second.id)
    assert find_archived(store.archive_dir, "", "a.yaml", first.id, None, MAX_BYTES) is None


def test_a_name_another_job_took_since_is_not_taken_for_the_first(store: ClaimStore) -> None:
    mine, theirs = new_id(), new_id()
    first = _run(store, "a.yaml", tagged(b"timeout: 1\n", mine))
    (store.archive_dir / "a.yaml").unlink()  # cleaned up; a later job of that name takes it
    later = _run(store, "a.yaml", tagged(b"timeout: 2\n", theirs))
    assert [p.name for p in store.archive_dir.iterdir()] == ["a.yaml"]
    assert _find(store, first, mine) is None
    assert _find(store, later, theirs) == store.archive_dir / "a.yaml"
    # A job dropped by hand (no tag) is told apart from a submitted one the same way.
    assert _find(store, first, None) is None


def test_what_is_not_a_regular_file_is_not_found(store: ClaimStore) -> None:
    claim = _run(store, "a.yaml", b"timeout: 1\n")
    archived = store.archive_dir / "a.yaml"
    os.rename(archived, store.archive_dir / "elsewhere.yaml")
    archived.symlink_to(store.archive_dir / "elsewhere.yaml")
    assert _find(store, claim, None) is None
    (store.archive_dir / unique_archive_name("a.yaml", claim.id)).mkdir()
    assert _find(store, claim, None) is None


def test_a_long_name_is_found_under_its_cut_unique_name(store: ClaimStore) -> None:
    name = "é" * 120 + ".yaml"
    _run(store, name, b"timeout: 1\n")
    second = _run(store, name, b"timeout: 2\n")
    found = _find(store, second, None)
    assert found is not None and found.name == unique_archive_name(name, second.id)
    assert len(found.name.encode()) < 255 and found.read_bytes() == b"timeout: 2\n"


def test_the_day_is_the_one_the_claim_id_says_to_the_last_microsecond() -> None:
    assert claimed_day("20261206T235959.999999-0a1b2c") == "2026/12/06"
    assert claimed_day("20261207T000000.000000-0a1b2c") == "2026/12/07"
    archive = Path("archive")
    claim_id = "20261206T235959.999999-0a1b2c"
    assert archive_folder(archive, "daily", claim_id, "") == archive / "2026/12/06"
    assert archive_folder(archive, "daily", claim_id, "in/x") == archive / "2026/12/06/in/x"
    assert archive_folder(archive, "flat", claim_id, "in/x") == archive / "in/x"
    with pytest.raises(ValueError):
        claimed_day("not-a-claim-id")


def test_a_job_is_found_under_the_layout_it_was_archived_with(store: ClaimStore) -> None:
    """A result from before a change of layout still finds its job, and one after it too."""
    daily = ClaimStore(store.root, store.archive_dir, store.inbox, layout="daily")
    mine = new_id()
    flat = _run(store, "sub/a.yaml", tagged(b"timeout: 1\n", mine))
    taken = _run(store, "sub/a.yaml", b"timeout: 2\n")  # a.yaml is taken in the flat folder
    dated = _run(daily, "sub/a.yaml", b"timeout: 3\n")
    again = _run(daily, "sub/a.yaml", b"timeout: 4\n")
    day = store.archive_dir / claimed_day(dated.id)
    assert _find(store, flat, mine) == store.archive_dir / "sub/a.yaml"
    # Its unique name in the flat folder, before an a.yaml of no submission in its date folder.
    flat_unique = store.archive_dir / "sub" / unique_archive_name("a.yaml", taken.id)
    assert _find(store, taken, None) == flat_unique
    assert _find(daily, dated, None) == day / "sub/a.yaml"
    assert _find(daily, again, None) == day / "sub" / unique_archive_name("a.yaml", again.id)
    assert [p.read_bytes() for p in (flat_unique, day / "sub/a.yaml")] == [
        b"timeout: 2\n",
        b"timeout: 3\n",
    ]
    assert _find(store, flat, new_id()) is None  # the plain names are other submissions'

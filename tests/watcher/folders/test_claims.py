from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.folders.claims import ClaimStore


@pytest.fixture
def processing(tmp_path: Path) -> ClaimStore:
    for name in ("inbox", "processing", "archive"):
        (tmp_path / name).mkdir()
    return ClaimStore(tmp_path / "processing", tmp_path / "archive", tmp_path / "inbox")


def _drop(tmp_path: Path, name: str = "job.yaml") -> Path:
    path = tmp_path / "inbox" / name
    path.write_text("timeout: 1\n")
    return path


def test_claim_moves_the_file_out_of_the_inbox(tmp_path: Path, processing: ClaimStore) -> None:
    source = _drop(tmp_path)
    claim = processing.claim(source)
    assert claim is not None and claim.attempt == 1
    assert not source.exists()
    assert claim.path.read_text() == "timeout: 1\n"
    assert claim.folder.name == f"{claim.id}.1"


def test_a_vanished_file_is_not_claimed(tmp_path: Path, processing: ClaimStore) -> None:
    assert processing.claim(tmp_path / "inbox" / "gone.yaml") is None
    assert list(processing.root.iterdir()) == []


def test_recovery_counts_attempts(tmp_path: Path, processing: ClaimStore) -> None:
    claim = processing.claim(_drop(tmp_path))
    assert claim is not None
    (recovered,) = processing.recover()
    assert (recovered.id, recovered.attempt, recovered.name) == (claim.id, 2, "job.yaml")
    (again,) = processing.recover()
    assert again.attempt == 3 and again.path.exists()


def test_a_staged_result_is_not_run_again(tmp_path: Path, processing: ClaimStore) -> None:
    claim = processing.claim(_drop(tmp_path))
    assert claim is not None
    processing.stage(claim, b"status: completed\n")
    (recovered,) = processing.recover()
    assert recovered.attempt == 1 and recovered.staged_result.exists()


def test_release_does_not_count_the_interrupted_start(
    tmp_path: Path, processing: ClaimStore
) -> None:
    claim = processing.claim(_drop(tmp_path))
    assert claim is not None
    processing.release(claim)
    (recovered,) = processing.recover()
    assert recovered.attempt == 1


def test_recovery_removes_empty_claims_and_temp_files(
    tmp_path: Path, processing: ClaimStore
) -> None:
    (processing.root / "20260101T000000.000000-abcdef.1").mkdir()
    claim = processing.claim(_drop(tmp_path))
    assert claim is not None
    (claim.folder / ".dropflow-tmp-0123").write_text("half")
    (recovered,) = processing.recover()
    assert recovered.id == claim.id
    assert sorted(p.name for p in recovered.folder.iterdir()) == ["job.yaml"]
    assert len(list(processing.root.iterdir())) == 1


def test_archive_keeps_every_file_of_a_reused_name(tmp_path: Path, processing: ClaimStore) -> None:
    archived = []
    for _ in range(3):
        claim = processing.claim(_drop(tmp_path))
        assert claim is not None
        archived.append(processing.finish(claim))
    assert archived[0] == tmp_path / "archive" / "job.yaml"
    assert len({p for p in archived}) == 3
    assert all(p is not None and p.exists() for p in archived)
    assert list(processing.root.iterdir()) == []


def test_a_claim_is_a_link_then_an_unlink(tmp_path: Path, processing: ClaimStore) -> None:
    source = _drop(tmp_path)
    inode = source.stat().st_ino
    claim = processing.claim(source)
    assert claim is not None and not source.exists()
    assert claim.path.stat().st_ino == inode and claim.path.stat().st_nlink == 1


def test_recovery_finishes_a_claim_cut_between_link_and_unlink(
    tmp_path: Path, processing: ClaimStore
) -> None:
    source = _drop(tmp_path)
    folder = processing.root / "20260101T000000.000000-abcdef.1"
    folder.mkdir()
    os.link(source, folder / source.name)  # the crash came before the unlink
    (recovered,) = processing.recover()
    assert not source.exists()
    assert recovered.path.read_text() == "timeout: 1\n" and recovered.attempt == 2


def test_recovery_leaves_a_new_file_of_the_same_name_alone(
    tmp_path: Path, processing: ClaimStore
) -> None:
    source = _drop(tmp_path)
    folder = processing.root / "20260101T000000.000000-abcdef.1"
    folder.mkdir()
    os.link(source, folder / source.name)  # claimed, the crash came before the unlink
    os.link(source, tmp_path / "elsewhere")  # so the claimed file keeps more than one link
    newer = tmp_path / "newer.yaml"
    newer.write_text("timeout: 2\n")
    os.replace(newer, source)  # then a new job took the name
    assert (folder / source.name).stat().st_nlink == 2
    (recovered,) = processing.recover()
    assert source.read_text() == "timeout: 2\n"
    assert recovered.path.read_text() == "timeout: 1\n"


def test_a_job_from_a_subfolder_keeps_it_through_recovery_and_archiving(
    tmp_path: Path, processing: ClaimStore
) -> None:
    (tmp_path / "inbox/a/b").mkdir(parents=True)
    source = _drop(tmp_path, "a/b/job.yaml")
    claim = processing.claim(source)
    assert claim is not None and claim.subfolder == "a/b" and claim.relative == "a/b/job.yaml"
    assert not source.exists() and processing.inbox_path(claim) == source
    (recovered,) = processing.recover()
    assert (recovered.subfolder, recovered.name, recovered.attempt) == ("a/b", "job.yaml", 2)
    # Archived under the same relative folder (made if missing), and a name taken there is
    # not taken again.
    (tmp_path / "archive/a/b").mkdir(parents=True)
    (tmp_path / "archive/a/b/job.yaml").write_text("older\n")
    archived = processing.finish(recovered)
    assert archived is not None and archived.parent == tmp_path / "archive/a/b"
    assert archived.name == f"job.{claim.id}.yaml" and archived.read_text() == "timeout: 1\n"
    top = processing.claim(_drop(tmp_path))
    assert top is not None and top.subfolder == ""
    assert processing.finish(top) == tmp_path / "archive/job.yaml"


def test_a_subfolder_claim_cut_between_link_and_unlink_is_finished(
    tmp_path: Path, processing: ClaimStore
) -> None:
    (tmp_path / "inbox/sub").mkdir()
    source = _drop(tmp_path, "sub/job.yaml")
    claim = processing.claim(source)
    assert claim is not None
    os.link(claim.path, source)  # as if the crash came before the inbox name was removed
    (recovered,) = processing.recover()
    assert not source.exists() and recovered.path.exists()
    assert os.listdir(tmp_path / "inbox/sub") == []

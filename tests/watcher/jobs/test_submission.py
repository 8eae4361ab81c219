"""The submission tag and the safe drop that `dropflow submit` relies on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.watcher.service.test_hostile import VALID_CASES
from watcher.cli.submit import Submission, drop, unique_name
from watcher.cli.validate import Checked
from watcher.folders.durable import rename_exclusive
from watcher.jobs.model import JobLimits
from watcher.jobs.reading import parse_job
from watcher.jobs.submission import (
    Tags,
    new_id,
    read_submission,
    read_tags,
    retry_of,
    retry_tagged,
    submission_of,
    tagged,
    valid_retry_of,
)

LIMITS = JobLimits(max_timeout=60, max_sleep=30, max_bytes=32768 + 100)


def test_a_tag_is_read_back() -> None:
    sid = new_id()
    assert submission_of(tagged(b"timeout: 1\n", sid)) == sid
    assert submission_of(b"timeout: 1\n") is None


def test_the_last_tag_counts_so_a_resubmitted_archive_file_gets_a_new_id() -> None:
    first, second = new_id(), new_id()
    assert first != second
    assert submission_of(tagged(tagged(b"timeout: 1\n", first), second)) == second


@pytest.mark.parametrize(
    "data",
    [b"timeout: 1", b"timeout: 1\r\n", b"", b"{timeout: 1}", b"timeout: 1\n...\n"],
    ids=["no-newline", "crlf", "empty", "flow", "document-end"],
)
def test_a_tag_is_a_line_of_its_own(data: bytes) -> None:
    sid = new_id()
    out = tagged(data, sid)
    assert out.startswith(data)
    assert submission_of(out) == sid
    assert out.splitlines()[-1] == f"# dropflow-submission: {sid}".encode()


def test_a_tag_inside_a_value_is_not_a_tag() -> None:
    assert submission_of(b"name: '# dropflow-submission: abc'\n") is None
    assert submission_of(b"  # dropflow-submission: abc\n") is None


def test_ids_that_could_break_the_line_are_refused() -> None:
    with pytest.raises(ValueError):
        tagged(b"timeout: 1\n", "a b\nname: x")


@pytest.mark.parametrize("case", VALID_CASES, ids=[c.id for c in VALID_CASES])
def test_the_tag_changes_nothing_the_job_model_sees(case: object) -> None:
    content = getattr(case, "content", None)
    if not isinstance(content, bytes):
        pytest.skip("not a content case")
    assert parse_job(tagged(content, new_id()), LIMITS) == parse_job(content, LIMITS)


def test_the_service_reads_the_tag_from_a_file(tmp_path: Path) -> None:
    sid = new_id()
    job = tmp_path / "a.yaml"
    job.write_bytes(tagged(b"timeout: ten\n", sid))  # invalid: the id is still found
    assert read_submission(job, 1000) == sid
    assert read_submission(tmp_path / "missing.yaml", 1000) is None
    (tmp_path / "link.yaml").symlink_to(job)
    assert read_submission(tmp_path / "link.yaml", 1000) is None


def test_rename_exclusive_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("mine")
    (tmp_path / "b").write_text("theirs")
    with pytest.raises(FileExistsError):
        rename_exclusive(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "theirs"
    assert (tmp_path / "a").read_text() == "mine"
    rename_exclusive(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_text() == "mine" and not (tmp_path / "a").exists()


def test_a_drop_never_replaces_a_waiting_job(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    first, first_id = drop(inbox, "job.yaml", b"timeout: 1\n", "aaaaaaaaaaaa")
    second, second_id = drop(inbox, "job.yaml", b"timeout: 2\n", "bbbbbbbbbbbb")
    assert first == inbox / "job.yaml" and second == inbox / "job.bbbbbbbbbbbb.yaml"
    assert first.read_bytes() == b"timeout: 1\n" and second.read_bytes() == b"timeout: 2\n"
    assert first_id != second_id
    assert os.lstat(second).st_ino == second_id[1]
    # No temp file is left behind, and the files are whole files of their own.
    assert sorted(p.name for p in inbox.iterdir()) == ["job.bbbbbbbbbbbb.yaml", "job.yaml"]
    assert os.lstat(first).st_nlink == 1


def test_unique_names_fit_a_file_system() -> None:
    assert unique_name("a.yaml", "t") == "a.t.yaml"
    assert unique_name("noext", "t") == "noext.t"
    long = unique_name("é" * 125 + ".yaml", "0123456789ab")
    assert len(long.encode()) <= 255


def _submission(tmp_path: Path, name: str) -> Submission:
    job = tmp_path / name
    job.write_bytes(b"timeout: 1\n")
    sub = Submission(name, Checked(job, parse_job(b"timeout: 1\n")))
    sub.dropped = tmp_path / "inbox" / name
    return sub


def _result_file(folder: Path, name: str, submission: str) -> None:
    folder.mkdir(exist_ok=True)
    data = {"job": name, "status": "completed", "message": "ok", "submission": submission}
    (folder / name).write_text(yaml.safe_dump(data))


def test_waiting_finds_its_own_result_among_those_of_its_name(tmp_path: Path) -> None:
    results = tmp_path / "results"
    sub = _submission(tmp_path, "x.yaml")
    _result_file(results, "x.result.yaml", "someone-else")
    assert not sub.find_result(results)
    _result_file(results, "x.result.2.yaml", sub.id)
    assert sub.find_result(results)
    assert sub.result_path == results / "x.result.2.yaml"


def test_the_sweep_finds_a_result_the_service_had_to_name_otherwise(tmp_path: Path) -> None:
    results = tmp_path / "results"
    sub = _submission(tmp_path, "x.yaml")
    _result_file(results, "x.0123abcd.result.yaml", sub.id)  # the job was renamed
    assert not sub.find_result(results)
    assert sub.find_result(results, everywhere=True)
    assert sub.result_path == results / "x.0123abcd.result.yaml"


# -- the retry tag ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["late.result.yaml", "late.result.2.yaml", "2026/12/late.result.yaml", "é x.result.12.yaml"],
)
def test_a_retry_tag_is_read_back_beside_the_submission_tag(value: str) -> None:
    sid = new_id()
    data = tagged(retry_tagged(b"timeout: 1\n", value), sid)
    assert (submission_of(data), retry_of(data)) == (sid, value)
    assert parse_job(data, LIMITS) == parse_job(b"timeout: 1\n", LIMITS)
    assert retry_of(b"timeout: 1\n") is None


def test_the_last_retry_tag_counts() -> None:
    twice = retry_tagged(retry_tagged(b"timeout: 1", "a.result.yaml"), "a.result.2.yaml")
    assert retry_of(twice) == "a.result.2.yaml"
    assert retry_of(twice + b"# dropflow-retry-of: a.result.3.yaml  \r\n") == "a.result.3.yaml"


@pytest.mark.parametrize(
    "value",
    [
        "../late.result.yaml",
        "a/../../late.result.yaml",
        "/etc/late.result.yaml",
        "a//late.result.yaml",
        "./late.result.yaml",
        "a\\late.result.yaml",
        "late.yaml",
        "late.result.0.yaml",
        "late.result.yaml/x",
        "",
        " late.result.yaml",
        "la\x1bte.result.yaml",
        "la\u2028te.result.yaml",
        "a/" * 600 + "late.result.yaml",
    ],
    ids=lambda v: repr(v)[:30],
)
def test_a_retry_tag_that_is_no_plain_result_path_is_refused_and_ignored(value: str) -> None:
    assert not valid_retry_of(value)
    with pytest.raises(ValueError):
        retry_tagged(b"timeout: 1\n", value)
    written = b"timeout: 1\n" + f"# dropflow-retry-of: {value}\n".encode()
    assert retry_of(written) is None


def test_a_retry_tag_of_bad_bytes_or_inside_a_value_is_no_tag() -> None:
    assert retry_of(b"timeout: 1\n# dropflow-retry-of: \xff.result.yaml\n") is None
    assert retry_of(b"name: '# dropflow-retry-of: a.result.yaml'\n") is None
    assert retry_of(b"  # dropflow-retry-of: a.result.yaml\n") is None


def test_the_service_reads_both_tags_from_a_file(tmp_path: Path) -> None:
    sid = new_id()
    job = tmp_path / "a.yaml"
    job.write_bytes(tagged(retry_tagged(b"timeout: ten\n", "a.result.yaml"), sid))
    assert read_tags(job, 1000) == Tags(sid, "a.result.yaml")
    assert read_tags(tmp_path / "missing.yaml", 1000) == Tags()

"""The submission tag: how `dropflow submit --wait` finds the result of its own submission.

A job's result is named after its file, and two people may submit `nightly.yaml` at the same
moment; the result's `claim_id` is chosen by the service, after the drop. So `submit` appends
one YAML comment line to the bytes it drops, `# dropflow-submission: <id>`, with an id of its
own. A comment changes nothing the job model sees (its keys, its values, its name), and the
service copies the id into the result as `submission`. The id is read from the raw bytes, not
from the validated job, so an error result (a cap the running service was started with)
carries it too.

`dropflow retry` adds a second tag, `# dropflow-retry-of: <result>`, naming the result it
retries by its path relative to the route's results folder (`late.result.yaml`,
`2026/12/late.result.2.yaml`); the service copies it into the new result as `retry_of`. The
service checks it before copying: a relative path of printable text, no `.`/`..` parts, at most
`MAX_RETRY_OF` characters, naming a result file (`<stem>.result[.N].yaml`); anything else is
ignored, as a missing tag is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from watcher.jobs.model import JobError
from watcher.jobs.names import timed_id
from watcher.jobs.reading import read_job_bytes

__all__ = [
    "MAX_RETRY_OF",
    "RETRY_TAG",
    "TAG",
    "Tags",
    "new_id",
    "read_submission",
    "read_tags",
    "retry_of",
    "retry_tagged",
    "submission_of",
    "tagged",
    "valid_retry_of",
]

TAG = "# dropflow-submission:"
"""The comment that carries a submission id; the last one in a file counts."""

_LINE = re.compile(rb"^# dropflow-submission: ([0-9A-Za-z._-]{1,64})[ \t]*\r?$", re.MULTILINE)


RETRY_TAG = "# dropflow-retry-of:"
"""The comment that names the result a retried job retries; the last one in a file counts."""

MAX_RETRY_OF = 1024
"""The longest `retry_of` taken, in characters: a name of up to 255 and a few subfolders."""

_RETRY_LINE = re.compile(rb"^# dropflow-retry-of: ([^\r\n]*?)[ \t]*\r?$", re.MULTILINE)
_RESULT_NAME = re.compile(r"^[^/]+\.result(\.[1-9][0-9]*)?\.yaml$")


@dataclass(frozen=True)
class Tags:
    """What the tags of a job file carry into its result."""

    submission: str | None = None
    retry_of: str | None = None


def new_id() -> str:
    """A fresh submission id: when (UTC, to the microsecond) and 48 random bits."""
    return timed_id(6)


def tagged(data: bytes, submission: str) -> bytes:
    """`data` with the submission comment appended on a line of its own.

    Appended, not prepended: the line numbers in any message about the file stay the user's.
    A tag already there (a file resubmitted from the archive) is left: the last one counts.
    """
    if not _LINE.fullmatch(f"{TAG} {submission}".encode()):
        raise ValueError(f"not a submission id: {submission!r}")
    return _appended(data, f"{TAG} {submission}".encode())


def retry_tagged(data: bytes, result: str) -> bytes:
    """`data` with the retry comment naming `result` appended on a line of its own (the last
    one counts, as for the submission tag)."""
    if not valid_retry_of(result):
        raise ValueError(f"not a result path to retry: {result!r}")
    return _appended(data, f"{RETRY_TAG} {result}".encode())


def _appended(data: bytes, line: bytes) -> bytes:
    newline = b"\r\n" if data.endswith(b"\r\n") else b"\n"
    separator = b"" if not data or data.endswith(b"\n") else newline
    return data + separator + line + newline


def valid_retry_of(value: str) -> bool:
    """Whether `value` may be a result's `retry_of`: a result file's path relative to a
    results folder, `/` between parts, nothing that climbs out of it or breaks a line."""
    if not 0 < len(value) <= MAX_RETRY_OF or value != value.strip():
        return False
    if not all(ch.isprintable() for ch in value) or "\\" in value:
        return False
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    return bool(_RESULT_NAME.match(parts[-1])) and not value.startswith("/")


def submission_of(data: bytes) -> str | None:
    """The submission id in a job file's bytes (the last tag), or None."""
    found = _LINE.findall(data)
    return found[-1].decode("ascii") if found else None


def retry_of(data: bytes) -> str | None:
    """The result a job file's bytes retry (the last retry tag), or None: no tag, or one
    that is not valid (`valid_retry_of`)."""
    found = _RETRY_LINE.findall(data)
    if not found:
        return None
    try:
        value = found[-1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return value if valid_retry_of(value) else None


def read_submission(path: Path, max_bytes: int) -> str | None:
    """The submission id of the job file at `path`, or None (no tag, not readable, not a
    regular file: the job's result then says why on its own)."""
    return read_tags(path, max_bytes).submission


def read_tags(path: Path, max_bytes: int) -> Tags:
    """The tags of the job file at `path`; none when it is not readable or not a regular
    file (the job's result then says why on its own)."""
    try:
        data = read_job_bytes(path, max_bytes)
    except (JobError, OSError):
        return Tags()
    return Tags(submission_of(data), retry_of(data))

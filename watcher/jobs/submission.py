"""The submission tag: how `dropflow submit --wait` finds the result of its own submission.

A job's result is named after its file, and two people may submit `nightly.yaml` at the same
moment; the result's `claim_id` is chosen by the service, after the drop. So `submit` appends
one YAML comment line to the bytes it drops, `# dropflow-submission: <id>`, with an id of its
own. A comment changes nothing the job model sees (its keys, its values, its name), and the
service copies the id into the result as `submission`. The id is read from the raw bytes, not
from the validated job, so an error result (a cap the running service was started with)
carries it too.
"""

from __future__ import annotations

import re
from pathlib import Path

from watcher.jobs.model import JobError
from watcher.jobs.names import timed_id
from watcher.jobs.reading import read_job_bytes

__all__ = ["TAG", "new_id", "read_submission", "submission_of", "tagged"]

TAG = "# dropflow-submission:"
"""The comment that carries a submission id; the last one in a file counts."""

_LINE = re.compile(rb"^# dropflow-submission: ([0-9A-Za-z._-]{1,64})[ \t]*\r?$", re.MULTILINE)


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
    newline = b"\r\n" if data.endswith(b"\r\n") else b"\n"
    separator = b"" if not data or data.endswith(b"\n") else newline
    return data + separator + f"{TAG} {submission}".encode() + newline


def submission_of(data: bytes) -> str | None:
    """The submission id in a job file's bytes (the last tag), or None."""
    found = _LINE.findall(data)
    return found[-1].decode("ascii") if found else None


def read_submission(path: Path, max_bytes: int) -> str | None:
    """The submission id of the job file at `path`, or None (no tag, not readable, not a
    regular file: the job's result then says why on its own)."""
    try:
        return submission_of(read_job_bytes(path, max_bytes))
    except (JobError, OSError):
        return None

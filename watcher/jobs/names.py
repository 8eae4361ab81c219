"""Which file names are job files, and how a name dropflow derives from one is kept short."""

from __future__ import annotations

import fnmatch
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

__all__ = ["ID_TIME_FORMAT", "MAX_STEM_BYTES", "cut_stem", "is_job_name", "timed_id"]

MAX_STEM_BYTES = 200
"""The longest stem a name dropflow makes keeps: room below the usual 255-byte file-name limit
for what it appends (`.result.NNNN.yaml`, a claim id, temp names)."""

_EDITOR_TEMP_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part", ".crdownload", ".partial")


def is_job_name(name: str, patterns: Iterable[str]) -> bool:
    """Whether a file name is a job file: it matches a pattern, case-insensitively, and is
    neither a dotfile nor an editor or download temp file."""
    if name.startswith((".", "~", "#")) or name.lower().endswith(_EDITOR_TEMP_SUFFIXES):
        return False
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def cut_stem(stem: str) -> str:
    """`stem` cut to `MAX_STEM_BYTES` bytes of UTF-8 (undecodable bytes kept as they came),
    never in the middle of a character."""
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_STEM_BYTES:
        return raw[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    return stem


ID_TIME_FORMAT = "%Y%m%dT%H%M%S.%f"
"""The time at the head of an id `timed_id` makes (UTC, to the microsecond)."""


def timed_id(random_bytes: int) -> str:
    """A fresh id that sorts by its making: `<UTC time>-<random_bytes random bytes in hex>`
    (claim ids and submission ids)."""
    return f"{datetime.now(UTC).strftime(ID_TIME_FORMAT)}-{secrets.token_hex(random_bytes)}"

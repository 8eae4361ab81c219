"""Which file names are job files."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

__all__ = ["is_job_name"]

_EDITOR_TEMP_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part", ".crdownload", ".partial")


def is_job_name(name: str, patterns: Iterable[str]) -> bool:
    """Whether a file name is a job file: it matches a pattern, case-insensitively, and is
    neither a dotfile nor an editor or download temp file."""
    if name.startswith((".", "~", "#")) or name.lower().endswith(_EDITOR_TEMP_SUFFIXES):
        return False
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)

"""Folders known by what they are (device and inode), not only by their path.

A path can come to name another folder while the service runs (`mv inbox inbox.bak && mkdir
inbox`, a symlink swapped in, a file system unmounted), and two paths can name one folder (a
bind mount, a symlink). `of` is the one place that asks the operating system; where it cannot
tell (`st_ino` is 0 on some Windows file systems and shares) it answers None, and the callers
fall back to comparing paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Identity", "Overlap", "of", "of_fd", "overlap"]


@dataclass(frozen=True)
class Identity:
    """A file's device and inode: the same for every path that names it."""

    dev: int
    ino: int

    def describe(self) -> str:
        """`device D, inode I`, for log lines."""
        return f"device {self.dev}, inode {self.ino}"


def _from(info: os.stat_result) -> Identity | None:
    # 0 is what Windows reports where a file system has no stable file index.
    return Identity(info.st_dev, info.st_ino) if info.st_ino else None


def of(path: Path) -> Identity | None:
    """The identity of what `path` names (symlinks followed), or None where unavailable.

    Raises:
        OSError: `path` cannot be looked up (FileNotFoundError: it is gone).
    """
    return _from(os.stat(path))


def of_fd(fd: int) -> Identity | None:
    """The identity of an open file, or None where unavailable."""
    return _from(os.fstat(fd))


Overlap = Literal["is", "is inside", "contains"]
"""How one folder sits against another."""


def overlap(folder: Path, other: Path) -> Overlap | None:
    """Whether `folder` is `other`, is inside it or contains it, however each is reached
    (bind mounts, symlinks); None if they are apart, or if an identity is unavailable.

    Both must exist. Each folder's real path is walked up to the root, comparing identities:
    a bind mount shows the same device and inode as the folder it mounts.
    """
    mine, theirs = _lineage(folder), _lineage(other)
    if not mine or not theirs:
        return None
    if mine[0] == theirs[0]:
        return "is"
    if theirs[0] in mine[1:]:
        return "is inside"
    if mine[0] in theirs[1:]:
        return "contains"
    return None


def _lineage(folder: Path) -> list[Identity]:
    """The identities of `folder` and of each of its parents; empty if one is unavailable."""
    real = Path(os.path.realpath(folder))
    found: list[Identity] = []
    for path in (real, *real.parents):
        identity = of(path)
        if identity is None:
            return []
        found.append(identity)
    return found

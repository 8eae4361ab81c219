"""An inbox as a tree: which paths under it hold job files, and the walk that lists them.

A file directly in the inbox is at depth 0, one in `inbox/a/b/` at depth 2. A recursive inbox
takes files down to `max_depth`; it never enters a dotfolder or a symlinked folder (a job file
that is a symlink is still listed: it is turned down with an error result).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watcher.jobs.names import is_job_name

__all__ = ["Order", "Tree"]

logger = logging.getLogger(__name__)

Order = Literal["oldest", "newest", "name"]
"""The order a scan hands out the files it finds: by mtime, by mtime descending, by path."""


@dataclass(frozen=True)
class Tree:
    """The job files under `root`: directly in it, or down to `max_depth` if `recursive`."""

    root: Path
    patterns: tuple[str, ...]
    recursive: bool = False
    max_depth: int = 8
    order: Order = "oldest"

    def folder_depth(self, folder: Path) -> int | None:
        """The depth of the files in `folder`, or None if the inbox does not look there."""
        try:
            parts = folder.relative_to(self.root).parts
        except ValueError:
            return None
        if parts and not self.recursive:
            return None
        if len(parts) > self.max_depth or any(part.startswith(".") for part in parts):
            return None
        return len(parts)

    def holds(self, path: Path) -> bool:
        """Whether `path` names a job file this inbox takes (by its place and name only)."""
        return self.folder_depth(path.parent) is not None and is_job_name(path.name, self.patterns)

    def walk(self, top: Path | None = None) -> list[Path]:
        """The job files under `top` (the root by default), in `order`.

        One `os.scandir` pass per folder, iterative (any depth), stat results from the entries.
        """
        top = self.root if top is None else top
        depth = self.folder_depth(top)
        if depth is None:
            return []
        found: list[tuple[int, Path]] = []
        folders = [(top, depth)]
        while folders:
            folder, depth = folders.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        self._visit(entry, depth, found, folders)
            except FileNotFoundError:
                continue  # gone since it was listed (the inbox itself: nothing to take)
            except OSError as exc:
                if folder == self.root:
                    raise  # the inbox itself: the service reports it and retries
                if not isinstance(exc, NotADirectoryError):  # a subfolder replaced by a file
                    logger.warning("cannot list %s: %s", folder, exc)
        if self.order == "name":
            found.sort(key=lambda item: item[1])
        else:
            found.sort(key=lambda item: (item[0], item[1]), reverse=self.order == "newest")
        return [path for _, path in found]

    def _visit(
        self,
        entry: os.DirEntry[str],
        depth: int,
        found: list[tuple[int, Path]],
        folders: list[tuple[Path, int]],
    ) -> None:
        # Not recursive: today's rule, where anything with a job's name (even a folder) is
        # listed, to be turned down if it is not a regular file.
        if self.recursive and entry.is_dir(follow_symlinks=False):
            if depth < self.max_depth and not entry.name.startswith("."):
                folders.append((Path(entry.path), depth + 1))
            return
        if not is_job_name(entry.name, self.patterns):
            return
        mtime = 0
        if self.order != "name":
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                return  # gone since the folder was listed
        found.append((mtime, Path(entry.path)))

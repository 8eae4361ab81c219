"""Confine a path a job names to the folder the config allows it to use.

A job file is written by whoever can drop a file in the inbox, so a path in it is hostile
input: it is read as relative to the allowed folder, the same on every platform, and refused
when it would lead anywhere else, by `..`, by an absolute or drive form, or through a symlink.
"""

from __future__ import annotations

import logging
import ntpath
import os
from pathlib import Path

from watcher.jobs.messages import show

__all__ = ["PathRefused", "confine"]

logger = logging.getLogger(__name__)


class PathRefused(Exception):
    """A path a job may not use; the message is one line naming the key, for the result file."""


def confine(value: object, root: Path, key: str) -> Path:
    """Resolve a path a job names inside `root`, or refuse it.

    `value` is read as a path relative to `root`, with `/` or `\\` between its parts, so a job
    file means the same on any platform. It need not exist yet.

    Args:
        value: The path as the job file gives it.
        root: The allowed folder: absolute, and existing.
        key: The dotted key the path came from (`parameters.path`), for the message.

    Returns:
        The absolute path, with every symlink along it resolved, inside `root` (itself
        resolved).

    Raises:
        PathRefused: `value` is not text, is empty, holds a NUL byte, is absolute (`/x`,
            `C:\\x`, `C:x`, `\\\\server\\share`), has a `..` part, or leads outside `root`
            through a symlink.
    """
    if not isinstance(value, str):
        raise PathRefused(f"{key}: must be a path as text, got {show(value)}")
    if not value:
        raise PathRefused(f"{key}: must be a path inside the files folder, got empty text")
    if "\x00" in value:
        raise PathRefused(f"{key}: must not contain a NUL byte, got {show(value)}")
    # Windows reads `\` as a separator, so a job file written there (or meant for it) must be
    # read the same way here: `..\x` is `../x`, and `\\server\share` is absolute.
    portable = value.replace("\\", "/")
    if portable.startswith("/") or ntpath.splitdrive(portable)[0]:
        raise PathRefused(
            f"{key}: must be relative to the files folder, not absolute, got {show(value)}"
        )
    parts = portable.split("/")
    if ".." in parts:
        raise PathRefused(
            f"{key}: must stay inside the files folder; {show(value)} leads outside it"
        )
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(real_root, *parts))
    try:
        inside = os.path.commonpath([real_root, resolved]) == real_root
    except ValueError:  # on Windows, a link to another drive
        inside = False
    if not inside:
        logger.debug("%s: %r resolves to %s, outside %s", key, value, resolved, real_root)
        raise PathRefused(
            f"{key}: must stay inside the files folder; {show(value)} leads outside it "
            "through a symbolic link"
        )
    return Path(resolved)

"""`FolderGuard`: the served folders, known by identity, checked while the service runs.

A path can come to name another folder under a running service. A replaced inbox (`mv inbox
inbox.bak && mkdir inbox`, an exchange, a symlink to a new folder) only needs watching again.
A `processing` folder that vanishes or is replaced (deleted, renamed, unmounted), or a lock
file that is no longer the one held, means the service no longer owns its folders: a second
service could take them, and the claims in flight cannot be finished; the service stops.

`overlaps` refuses, at start, a results, archive or processing folder that is the inbox, is
inside it or contains it under another path (a bind mount, a symlink), which comparing paths
cannot see; `FolderGuard.misplaced` stops the service when one becomes so while it runs
(every result published into the inbox would be taken for a new job). Where identities are
unavailable (`watcher.folders.identity.of` answers None) only paths count, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from watcher.config.settings import Settings
from watcher.folders import identity
from watcher.folders.identity import Identity
from watcher.folders.lock import FolderLock

__all__ = ["FolderGuard", "Lost", "overlaps", "routes_overlap"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lost:
    """Why the service no longer owns its folders."""

    reason: str
    claims_reachable: bool
    """Whether the claims in flight can still be finished or put back (only the lock went)."""
    consequence: str = (
        "this service no longer owns its folders, and another one could take them: restart "
        "dropflow once they are back"
    )


class FolderGuard:
    """The identities of the inbox and `processing` when the service took them, and checks."""

    def __init__(self, settings: Settings, lock: FolderLock) -> None:
        """Record the folders' identities now (the service holds their lock)."""
        self.settings = settings
        self.inbox_path = settings.inbox
        self.processing_path = settings.processing
        self.lock = lock
        self.inbox = _identity(settings.inbox)
        self.processing = _identity(settings.processing)

    def lost(self) -> Lost | None:
        """Why `processing` or its lock is no longer this service's, or None while it is."""
        path = self.processing_path
        try:
            now = identity.of(path)
        except OSError as exc:
            return Lost(f"processing ({path}) is gone ({exc.strerror or exc})", False)
        if not path.is_dir():
            return Lost(f"processing ({path}) is no longer a folder", False)
        if now is not None and self.processing is not None and now != self.processing:
            return Lost(
                f"processing ({path}) was replaced ({self.processing.describe()} when the "
                f"service took it, {now.describe()} now: deleted, renamed or unmounted)",
                False,
            )
        reason = self.lock.lost()
        return Lost(reason, True) if reason is not None else None

    def inbox_changed(self) -> str | None:
        """How the folder at the inbox's path changed since it was recorded (recording the new
        one), or None: unchanged, missing (the inbox's own health check sees to that), or
        identities unavailable."""
        try:
            now = identity.of(self.inbox_path)
        except OSError:
            return None
        if now is None or self.inbox is None or now == self.inbox:
            return None
        before, self.inbox = self.inbox, now
        change = f"{before.describe()} before, {now.describe()} now"
        if self.processing is not None and now.dev != self.processing.dev:
            change += (
                f"; it is on another file system than processing ({self.processing_path}): "
                "its jobs cannot be claimed until it is back on the same one"
            )
        return change

    def misplaced(self) -> Lost | None:
        """Why results, archive or processing can no longer be used beside the inbox (a bind
        mount or a symlink made while serving), or None."""
        try:
            reason = overlaps(self.settings)
        except OSError:
            return None  # a folder is missing: the other checks and the pipeline see to it
        if reason is None:
            return None
        return Lost(reason, True, "the service stops rather than take its own files for jobs")

    def record_inbox(self) -> None:
        """Take the folder now at the inbox's path as the inbox (after it was recreated)."""
        self.inbox = _identity(self.inbox_path)


def _identity(path: Path) -> Identity | None:
    try:
        return identity.of(path)
    except OSError:
        return None


def overlaps(settings: Settings) -> str | None:
    """Why results, archive or processing cannot be used beside the inbox, or None.

    All the folders must exist.
    """
    for key in ("processing", "results", "archive"):
        folder: Path = getattr(settings, key)
        how = identity.overlap(folder, settings.inbox)
        if how is None:
            continue
        relation = "is the same folder as" if how == "is" else how
        return (
            f"{key} ({folder}) {relation} inbox ({settings.inbox}), counting bind mounts and "
            f"symbolic links: {key} must be a folder apart from the inbox"
        )
    return None


def routes_overlap(settings: Settings) -> str | None:
    """Why two routes' folders cannot be served together, counting bind mounts and symbolic
    links (the settings compared their paths already), or None. All folders must exist."""
    routes = list(settings.served.values())
    for a in routes:
        for b in routes:
            if a is b:
                continue
            how = identity.overlap(a.inbox, b.inbox)
            if how == "is" and a.name < b.name:
                return (
                    f"routes: {a.name}'s inbox ({a.inbox}) and {b.name}'s inbox ({b.inbox}) "
                    "are the same folder, counting bind mounts and symbolic links: one folder "
                    "is served by one route"
                )
            if how == "is inside" and b.recursive:
                return (
                    f"routes: {a.name}'s inbox ({a.inbox}) is inside {b.name}'s inbox "
                    f"({b.inbox}), which is recursive, counting bind mounts and symbolic links"
                )
            for key in ("results", "archive", "processing"):
                folder: Path = getattr(b, key)
                how = identity.overlap(folder, a.inbox)
                if how is not None:
                    relation = "is the same folder as" if how == "is" else how
                    return (
                        f"routes: {b.name}'s {key} ({folder}) {relation} {a.name}'s inbox "
                        f"({a.inbox}), counting bind mounts and symbolic links: an inbox must "
                        "be apart from every results, archive and processing folder"
                    )
    return None

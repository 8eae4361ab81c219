"""The processing folder: a job file is claimed before its flow starts, and stays claimed
until its result is published and the file is archived.

Layout: one folder per claim, `<processing>/<claim id>.<attempt>/`, holding the job file under
its own name and, once the outcome is known, the staged result `.result.yaml`. Every state
change is one rename (the claim itself a link and an unlink), so a crash at any point leaves a
state that `recover` can finish:

- a folder with the job file and no staged result was in flight: it runs again, as the next
  attempt (the attempt number is in the folder name);
- a folder with a staged result only needs publishing and archiving;
- an empty folder is a claim that never got its file (a crash between mkdir and rename).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher.results import TEMP_PREFIX, fsync_dir, write_atomic

__all__ = ["Claim", "Processing"]

logger = logging.getLogger(__name__)

STAGED_RESULT = ".result.yaml"
_FOLDER = re.compile(r"^(?P<id>\d{8}T\d{6}\.\d{6}-[0-9a-f]{6})\.(?P<attempt>\d+)$")
_MAX_STEM_BYTES = 200


@dataclass(frozen=True)
class Claim:
    """A job file taken out of the inbox, with the attempt it is on."""

    id: str
    attempt: int
    name: str
    root: Path

    @property
    def folder(self) -> Path:
        """The claim's own folder."""
        return self.root / f"{self.id}.{self.attempt}"

    @property
    def path(self) -> Path:
        """Where the claimed job file now is."""
        return self.folder / self.name

    @property
    def staged_result(self) -> Path:
        """Where the result waits, once known, until it is published."""
        return self.folder / STAGED_RESULT


def _new_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"{stamp}-{secrets.token_hex(3)}"


class Processing:
    """Claims, recovery and archiving over the processing and archive folders."""

    def __init__(self, root: Path, archive: Path, inbox: Path | None = None) -> None:
        self.root = root
        self.archive_dir = archive
        self.inbox = inbox
        # Archive names are chosen and taken under one lock: two jobs of the same name may
        # finish at once, and a rename would silently replace the other's file.
        self._archive_lock = threading.Lock()

    def claim(self, source: Path) -> Claim | None:
        """Move `source` into a new claim folder; None if it is gone (claimed elsewhere)."""
        claim = Claim(id=_new_id(), attempt=1, name=source.name, root=self.root)
        claim.folder.mkdir()
        try:
            self._take(source, claim)
        except FileNotFoundError:
            claim.folder.rmdir()
            return None
        return claim

    def _take(self, source: Path, claim: Claim) -> None:
        """Move `source` into the claim: a hard link made durable, then an unlink.

        Not a rename: a rename out of the watched inbox is an unpaired move, which watchdog's
        inotify emitter holds for 0.5 s while every event behind it waits (watchdog#477; a job
        dropped right after another was seen 0.5 s late). A crash between the link and the
        unlink leaves the file in both places; `recover` removes the inbox name. Where hard
        links are impossible (FAT, some shares, a folder), it is a rename.
        """
        try:
            os.link(source, claim.path, follow_symlinks=False)
            linked = True
        except FileNotFoundError:
            raise
        except OSError:
            os.rename(source, claim.path)
            linked = False
        fsync_dir(claim.folder)
        fsync_dir(self.root)
        if linked:
            os.unlink(source)

    def _finish_take(self, claim: Claim) -> None:
        """Remove the inbox name of a claim interrupted between its link and its unlink."""
        if self.inbox is None:
            return
        try:
            mine = os.lstat(claim.path)
            theirs = os.lstat(self.inbox / claim.name)
        except FileNotFoundError:
            return
        if mine.st_nlink > 1 and (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            os.unlink(self.inbox / claim.name)
            logger.info("finished claiming %s (interrupted by a crash)", claim.name)

    def recover(self) -> list[Claim]:
        """The claims left by an earlier run, oldest first, each moved to its next attempt.

        Claims with a staged result keep their attempt: only publishing is left to do.
        Empty claim folders and stray temp files are removed.
        """
        found: list[Claim] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            match = _FOLDER.match(entry.name)
            if not match or not entry.is_dir(follow_symlinks=False):
                continue
            folder = Path(entry.path)
            for stray in folder.glob(f"{TEMP_PREFIX}*"):
                stray.unlink()
            names = [n for n in os.listdir(folder) if n != STAGED_RESULT]
            claim = Claim(match["id"], int(match["attempt"]), names[0] if names else "", self.root)
            if not names:
                if claim.staged_result.exists():
                    logger.warning("claim %s has a result but no job file", claim.id)
                    found.append(claim)
                else:
                    shutil.rmtree(folder)
                continue
            self._finish_take(claim)
            if not claim.staged_result.exists():
                claim = self._move(claim, claim.attempt + 1)
            found.append(claim)
        fsync_dir(self.root)
        return found

    def release(self, claim: Claim) -> Claim:
        """Put back a claim interrupted by a graceful stop: that start does not count."""
        return self._move(claim, max(claim.attempt - 1, 0))

    def _move(self, claim: Claim, attempt: int) -> Claim:
        moved = replace(claim, attempt=attempt)
        os.rename(claim.folder, moved.folder)
        fsync_dir(self.root)
        return moved

    def stage(self, claim: Claim, data: bytes) -> None:
        """Record the claim's result durably inside its folder (one atomic rename)."""
        tmp = write_atomic(claim.folder, data)
        os.replace(tmp, claim.staged_result)
        fsync_dir(claim.folder)

    def finish(self, claim: Claim) -> Path | None:
        """Archive the job file and remove the claim folder; the archived path, if any."""
        archived = None
        if claim.name and os.path.lexists(claim.path):
            archived = self._archive(claim)
        shutil.rmtree(claim.folder, ignore_errors=True)
        fsync_dir(self.root)
        return archived

    def archive_name(self, claim: Claim) -> Path:
        """Where the job file goes: its own name, or one made unique by the claim id."""
        first = self.archive_dir / claim.name
        if not os.path.lexists(first):
            return first
        name = Path(claim.name)
        stem = name.stem if name.suffix else claim.name
        raw = stem.encode("utf-8", "surrogateescape")
        if len(raw) > _MAX_STEM_BYTES:
            stem = raw[:_MAX_STEM_BYTES].decode("utf-8", "ignore")
        return self.archive_dir / f"{stem}.{claim.id}{name.suffix}"

    def _archive(self, claim: Claim) -> Path:
        with self._archive_lock:
            target = self.archive_name(claim)
            with contextlib.suppress(FileNotFoundError):
                os.rename(claim.path, target)
        fsync_dir(self.archive_dir)
        return target

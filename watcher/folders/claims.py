"""The processing folder: a job file is claimed before its flow starts, and stays claimed
until its result is published and the file is archived.

Layout: one folder per claim, `<processing>/<claim id>.<attempt>/`, holding the job file under
its own name and, once the outcome is known, the staged result `.result.yaml`. Every state
change is one rename (the claim itself a link and an unlink), so a crash at any point leaves a
state that `recover` can finish:

- a folder with the job file and no staged result was in flight: it runs again, as the next
  attempt (the attempt number is in the folder name);
- a folder with a staged result only needs publishing (unless `.published` says it was) and
  archiving (to the place `.archive` gives, if the move had begun);
- an empty folder is a claim that never got its file (a crash between mkdir and rename).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from watcher.defaults import ArchiveLayout
from watcher.folders.archive import (
    archive_folder,
    move_file,
    same_bytes,
    split_name,
    unique_archive_name,
)
from watcher.folders.durable import (
    TEMP_PREFIX,
    fsync_dir,
    link_or_rename,
    make_folders,
    place,
    same_file,
    write_atomic,
)
from watcher.jobs.names import timed_id

__all__ = ["Claim", "ClaimStore"]

logger = logging.getLogger(__name__)

STAGED_RESULT = ".result.yaml"
PUBLISHED = ".published"
"""Written once the result is published, so a retry of the archive step never publishes again."""
SUBFOLDER = ".subfolder"
"""The job's folder relative to the inbox, for a job taken from a subfolder (a recursive
route): its result and archived file go to the same relative folder."""
ARCHIVE_JOURNAL = ".archive"
"""Where the job file goes in the archive (its path relative to the archive, `/` between
parts), written before it is moved there: a move cut by a crash is finished in the same folder
under the same name, never copied twice, even by a restart with another `archive_layout`. A
name alone (written before dated archives) is in the flat layout's folder."""
RETIRED_PREFIX = ".dropflow-done-"
"""A finished claim folder is renamed to this before it is removed."""
ASIDE_PREFIX = ".dropflow-claimed-"
"""The inbox name a claimed file is renamed to before it is removed from the inbox."""
CLAIM_FOLDER = re.compile(r"^(?P<id>(?P<at>\d{8}T\d{6}\.\d{6})-[0-9a-f]{6})\.(?P<attempt>\d+)$")
"""A claim folder's name (`Claim.folder`): `at` is when it was claimed (`ID_TIME_FORMAT`)."""


@dataclass(frozen=True)
class Claim:
    """A job file taken out of the inbox, with the attempt it is on."""

    id: str
    attempt: int
    name: str
    root: Path
    subfolder: str = ""
    """The folder it was taken from, relative to the inbox, with `/` between parts ("" for
    the inbox itself)."""

    @property
    def relative(self) -> str:
        """The job file's path relative to the inbox."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name

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
    return timed_id(3)  # CLAIM_FOLDER expects 6 hex digits


class LostRace(Exception):
    """Another claimer took the file first (only possible without the folder lock)."""


class ClaimStore:
    """Claims, recovery and archiving over the processing and archive folders."""

    def __init__(
        self,
        root: Path,
        archive: Path,
        inbox: Path | None = None,
        *,
        layout: ArchiveLayout = "flat",
    ) -> None:
        """`layout`: how `archive` is laid out (`archive_folder`); the service passes its
        route's `archive_layout`."""
        self.root = root
        self.archive_dir = archive
        self.layout: ArchiveLayout = layout
        self.inbox = inbox
        # Archive names are chosen, reserved and taken under one lock: two jobs of the same
        # name may finish at once, and each must get a name of its own.
        self._archive_lock = threading.Lock()
        self._reserved: set[str] = set()

    # -- claiming --------------------------------------------------------------------------

    def claim(self, source: Path) -> Claim | None:
        """Move `source` into a new claim folder; None if it is gone (claimed elsewhere).

        Raises:
            PermissionError: the file is still open by its writer where that forbids a move
                (Windows); it stays in the inbox, to be tried again.
        """
        subfolder = self._subfolder_of(source)
        claim = Claim(_new_id(), 1, source.name, self.root, subfolder)
        claim.folder.mkdir()
        try:
            if subfolder:
                # Before the job file: a claim recovered with its file knows where it came from.
                self._write(claim, SUBFOLDER, os.fsencode(subfolder), sync=False)
            self._take(source, claim)
        except (FileNotFoundError, LostRace):
            shutil.rmtree(claim.folder, ignore_errors=True)
            return None
        except BaseException:
            # Undo only while the inbox still has the file: a claim that holds the only name
            # of its job (a rename went through) stays, for the next start to recover.
            if not os.path.lexists(claim.path) or same_file(source, claim.path):
                shutil.rmtree(claim.folder, ignore_errors=True)
            raise
        return claim

    def _subfolder_of(self, source: Path) -> str:
        if self.inbox is None or source.parent == self.inbox:
            return ""
        return source.parent.relative_to(self.inbox).as_posix()

    def inbox_path(self, claim: Claim) -> Path | None:
        """Where the claim's job file was in the inbox."""
        if self.inbox is None:
            return None
        folder = self.inbox / claim.subfolder if claim.subfolder else self.inbox
        return folder / claim.name

    def _take(self, source: Path, claim: Claim) -> None:
        """Move `source` into the claim: a hard link made durable, then the inbox name removed.

        Not a rename: a rename out of the watched inbox is an unpaired move, which watchdog's
        inotify emitter holds for 0.5 s while every event behind it waits (watchdog#477; a job
        dropped right after another was seen 0.5 s late). A crash between the link and the
        unlink leaves the file in both places; `recover` removes the inbox name. Where hard
        links are impossible (FAT, some shares, a folder), it is a rename.
        """
        linked = link_or_rename(source, claim.path)
        fsync_dir(claim.folder)
        fsync_dir(self.root)
        if linked:
            self._remove_inbox_name(claim, source)

    def _remove_inbox_name(self, claim: Claim, source: Path) -> None:
        """Remove the inbox name of the claimed file, and only of that file.

        Another file may have taken the name since the link (a writer replacing the job):
        unlinking the name would destroy that new job. So the name is first renamed aside,
        which takes whatever holds it atomically, and the file found there is removed only if
        it is the claimed one; anything else goes back into the inbox as a new job.
        """
        # Beside it: a rename within one folder (a recursive inbox watches every subfolder,
        # and `_recover_asides` looks in the job's own subfolder, which the claim records).
        aside = source.parent / f"{ASIDE_PREFIX}{claim.id}"
        try:
            os.rename(source, aside)
        except FileNotFoundError:
            # Gone since the link: taken by another claimer (still linked: it goes on, we
            # back out) or deleted (we hold the only link: the job is ours).
            if os.lstat(claim.path).st_nlink > 1:
                os.unlink(claim.path)
                raise LostRace(claim.name) from None
            return
        if same_file(aside, claim.path):
            os.unlink(aside)
        else:
            self._restore(aside, claim.name)

    def _restore(self, aside: Path, name: str) -> None:
        """Give a file found at a claimed job's name back to the inbox, as a new job."""
        folder = aside.parent
        stem, suffix = split_name(name)
        for candidate in (name, f"{stem}.{secrets.token_hex(4)}{suffix}"):
            try:
                place(aside, folder / candidate)
            except FileExistsError:
                continue
            logger.info("%s was replaced while being claimed: the new file is a new job", name)
            return
        raise FileExistsError(f"no free inbox name for a replaced {name}")

    def _recover_asides(self) -> None:
        """Finish the inbox side of claims cut by a crash (see `_remove_inbox_name`), in the
        inbox and in the subfolders claims in processing came from."""
        if self.inbox is None or not self.inbox.is_dir():
            return
        folders = {self.inbox}
        for path in self.root.glob(f"*/{SUBFOLDER}"):
            with contextlib.suppress(OSError):
                folders.add(self.inbox / os.fsdecode(path.read_bytes()))
        for folder in folders:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                self._recover_asides_in(folder)

    def _recover_asides_in(self, inbox: Path) -> None:
        for entry in os.scandir(inbox):
            if not entry.name.startswith(ASIDE_PREFIX):
                continue
            claim_id = entry.name[len(ASIDE_PREFIX) :]
            folders = [f for f in self.root.glob(f"{claim_id}.*") if f.is_dir()]
            aside = Path(entry.path)
            files = [
                f for folder in folders for f in folder.iterdir() if not f.name.startswith(".")
            ]
            if any(same_file(aside, f) for f in files):
                aside.unlink()
            else:
                self._restore(aside, files[0].name if files else f"recovered-{claim_id}.yaml")

    def _finish_take(self, claim: Claim) -> None:
        """Remove the inbox name of a claim interrupted between its link and its unlink."""
        source = self.inbox_path(claim)
        if source is None:
            return
        try:
            mine = os.lstat(claim.path)
        except FileNotFoundError:
            return
        if mine.st_nlink > 1 and same_file(claim.path, source):
            with contextlib.suppress(LostRace):
                self._remove_inbox_name(claim, source)
            logger.info("finished claiming %s (interrupted by a crash)", claim.name)

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> list[Claim]:
        """The claims left by an earlier run, oldest first, each moved to its next attempt.

        Claims with a staged result keep their attempt: only publishing is left to do.
        Empty claim folders and stray temp files are removed.
        """
        self._recover_asides()
        found: list[Claim] = []
        for retired in self.root.glob(f"{RETIRED_PREFIX}*"):
            shutil.rmtree(retired, ignore_errors=True)
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            match = CLAIM_FOLDER.match(entry.name)
            if not match or not entry.is_dir(follow_symlinks=False):
                continue
            folder = Path(entry.path)
            for stray in folder.glob(f"{TEMP_PREFIX}*"):
                stray.unlink()
            names = [n for n in os.listdir(folder) if n not in _BOOKKEEPING]
            claim = Claim(
                match["id"],
                int(match["attempt"]),
                names[0] if names else "",
                self.root,
                _read_subfolder(folder),
            )
            if not names:
                if claim.staged_result.exists():
                    logger.warning("claim %s has a result but no job file", claim.id)
                    found.append(claim)
                else:
                    shutil.rmtree(folder)
                continue
            self._finish_take(claim)
            journal = self._journaled(claim)
            if journal is not None:
                self._reserved.add(str(journal))
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

    # -- finishing -------------------------------------------------------------------------

    def stage(self, claim: Claim, data: bytes) -> None:
        """Record the claim's result durably inside its folder (one atomic rename)."""
        self._write(claim, STAGED_RESULT, data)

    def mark_published(self, claim: Claim, result: Path) -> None:
        """Record that the claim's result is published as `result`."""
        self._write(claim, PUBLISHED, os.fsencode(result.name))

    @staticmethod
    def published_as(claim: Claim, results: Path) -> Path | None:
        """Where the claim's result was published, if it was."""
        try:
            return results / os.fsdecode((claim.folder / PUBLISHED).read_bytes())
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(claim: Claim, name: str, data: bytes, *, sync: bool = True) -> None:
        tmp = write_atomic(claim.folder, data)
        os.replace(tmp, claim.folder / name)
        if sync:
            fsync_dir(claim.folder)

    def finish(self, claim: Claim) -> Path | None:
        """Archive the job file, then remove the claim folder; the archived path, if any.

        The job file leaves `processing` only once its archived copy is durable. Safe to call
        again after a failure or a crash at any point: the move resumes under the same name.
        """
        archived = None
        if claim.name and os.path.lexists(claim.path):
            archived = self._archive(claim)
        # One rename retires the claim: removing its files one by one could let a crash leave
        # a job file (linked into the archive) without its staged result, to be run again.
        retired = self.root / f"{RETIRED_PREFIX}{claim.folder.name}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(claim.folder, retired)
        fsync_dir(self.root)
        shutil.rmtree(retired, ignore_errors=True)
        if archived is not None:
            with self._archive_lock:
                self._reserved.discard(str(archived))
        return archived

    def archive_folder(self, claim: Claim) -> Path:
        """The folder the claim's job file is archived in: the archive, or its date folder
        (`daily`), then the same relative folder as in the inbox."""
        return archive_folder(self.archive_dir, self.layout, claim.id, claim.subfolder)

    def archive_name(self, claim: Claim) -> Path:
        """Where the job file goes: its own name, or one made unique by the claim id."""
        folder = self.archive_folder(claim)
        first = folder / claim.name
        if not os.path.lexists(first) and str(first) not in self._reserved:
            return first
        return folder / unique_archive_name(claim.name, claim.id)

    def _journaled(self, claim: Claim) -> Path | None:
        """Where the claim's job file was bound in the archive, if its move had begun."""
        try:
            entry = os.fsdecode((claim.folder / ARCHIVE_JOURNAL).read_bytes())
        except FileNotFoundError:
            return None
        if "/" not in entry:
            return archive_folder(self.archive_dir, "flat", claim.id, claim.subfolder) / entry
        return self.archive_dir.joinpath(*entry.split("/"))

    def _journal(self, claim: Claim, target: Path) -> None:
        self._write(
            claim, ARCHIVE_JOURNAL, os.fsencode(target.relative_to(self.archive_dir).as_posix())
        )

    def _archive(self, claim: Claim) -> Path:
        with self._archive_lock:
            target = self._journaled(claim)
            if target is None:
                target = self.archive_name(claim)
                self._journal(claim, target)
            self._reserved.add(str(target))
        folder = target.parent
        # Recreated if someone removed it while the service runs: never a reason to lose a job.
        make_folders(folder)
        tmp = folder / f"{TEMP_PREFIX}{claim.id}"
        placed = same_file(claim.path, target) or same_file(tmp, target)
        if placed or (not target.is_symlink() and same_bytes(claim.path, target)):
            # Moved there by an attempt cut short: only the clean-up is left.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fsync_dir(folder)
            return target
        if os.path.lexists(target):
            # Taken by someone else since the journal was written: a fresh name.
            with self._archive_lock:
                stem, suffix = split_name(target.name)
                target = folder / f"{stem}.{claim.id}{suffix}"
                self._journal(claim, target)
                self._reserved.add(str(target))
        _mark_archived_now(claim.path)
        move_file(claim.path, target, tmp)
        return target


def _mark_archived_now(path: Path) -> None:
    """Give a job file about to be archived the time of archiving as its mtime: retention
    (`archive_days`) ages archived files by it, and the job's own mtime may be years old
    (`cp -p`). Set before the move, so the archived name never shows an old time. Only a
    regular file: a hostile link must not make us touch what it points to."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.utime(path)


_BOOKKEEPING = frozenset({STAGED_RESULT, PUBLISHED, ARCHIVE_JOURNAL, SUBFOLDER})


def _read_subfolder(folder: Path) -> str:
    try:
        return os.fsdecode((folder / SUBFOLDER).read_bytes())
    except FileNotFoundError:
        return ""

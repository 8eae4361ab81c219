"""Moving a claimed job file into the archive folder without ever replacing a file there: a
link or a rename on the same file system, a copy placed under its name on another one; and
finding it there again from its result (`dropflow retry`).

A job file is archived under its own name, or, when that is taken, under
`unique_archive_name` (`<stem>.<claim id><suffix>`): the same relative folder of the archive as
its inbox subfolder (see `ClaimStore.archive_folder`)."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import logging
import os
import shutil
import stat
from pathlib import Path

from watcher import features
from watcher.folders.durable import NO_LINK, TEMP_PREFIX, copy_into, fsync_dir, place
from watcher.jobs.model import JobError
from watcher.jobs.names import cut_stem
from watcher.jobs.reading import read_job_bytes
from watcher.jobs.submission import submission_of

__all__ = ["find_archived", "move_file", "same_bytes", "split_name", "unique_archive_name"]

logger = logging.getLogger(__name__)


def move_file(source: Path, target: Path, tmp: Path) -> None:
    """Link or rename (same file system), or copy to `tmp` and place (another one).

    Never replaces a file at `target`. The claim keeps its own name for the file until the
    claim is retired, so a cut move is resumed, not lost.
    """
    regular = stat.S_ISREG(os.lstat(source).st_mode)
    if regular and features.current().hard_links:
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
        else:
            fsync_dir(target.parent)
            return
    try:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target))
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    else:
        fsync_dir(target.parent)
        return
    # Another file system: copy to a temp name there, fsync, then give it its name.
    if regular:
        place(copy_into(target.parent, source, tmp.name[len(TEMP_PREFIX) :]), target)
    else:
        _copy_special(source, target, tmp)


def _copy_special(source: Path, target: Path, tmp: Path) -> None:
    """Archive what is not a regular file (a hostile job: a link, a folder) on another file
    system: a symlink is made again, a folder copied without following links; a FIFO, socket
    or device holds nothing to keep and is only dropped (with the error result it got)."""
    mode = os.lstat(source).st_mode
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), tmp)
    elif stat.S_ISDIR(mode):
        shutil.copytree(source, tmp, symlinks=True)
    else:
        logger.warning("%s: a special file, not archived on another file system", source.name)
        return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    os.rename(tmp, target)
    fsync_dir(target.parent)


def split_name(name: str) -> tuple[str, str]:
    """A file name's stem and suffix (`"x.yaml"` → `("x", ".yaml")`; no suffix → `(name, "")`)."""
    path = Path(name)
    return (path.stem, path.suffix) if path.suffix else (name, "")


def same_bytes(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def unique_archive_name(name: str, claim_id: str) -> str:
    """The archive name of a job file whose own name is taken: `<stem>.<claim id><suffix>`."""
    stem, suffix = split_name(name)
    return f"{cut_stem(stem)}.{claim_id}{suffix}"


def find_archived(
    folder: Path, name: str, claim_id: str, submission: str | None, max_bytes: int
) -> Path | None:
    """The archived job file of the claim `claim_id` of a job named `name`, in its archive
    `folder`; None if it is not there (removed since, or never archived).

    Its unique name (`unique_archive_name`, also without the stem cut) is that claim's alone.
    Its own name may hold another job's file (the first of that name was removed, and a later
    one took its name): it counts only if its submission tag is the result's `submission`
    (both none, for a file not dropped by `dropflow submit`).
    """
    stem, suffix = split_name(name)
    for candidate in dict.fromkeys(
        (unique_archive_name(name, claim_id), f"{stem}.{claim_id}{suffix}")
    ):
        if _regular(folder / candidate):
            return folder / candidate
    plain = folder / name
    if not _regular(plain):
        return None
    try:
        tag = submission_of(read_job_bytes(plain, max_bytes))
    except (JobError, OSError):
        return None
    return plain if tag == submission else None


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False

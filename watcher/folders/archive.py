"""Moving a claimed job file into the archive folder without ever replacing a file there: a
link or a rename on the same file system, a copy placed under its name on another one; and
finding it there again from its result (`dropflow retry`).

A job file is archived under its own name, or, when that is taken, under
`unique_archive_name` (`<stem>.<claim id><suffix>`), in `archive_folder`: under the `daily`
layout the UTC date its claim id gives (`<archive>/YYYY/MM/DD/`), under `flat` the archive
itself; then the same relative folder as its inbox subfolder."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import logging
import os
import shutil
import stat
from datetime import datetime
from pathlib import Path

from watcher import features
from watcher.defaults import ArchiveLayout
from watcher.folders.durable import NO_LINK, TEMP_PREFIX, copy_into, fsync_dir, place
from watcher.jobs.model import JobError
from watcher.jobs.names import ID_TIME_FORMAT, cut_stem
from watcher.jobs.reading import read_job_bytes
from watcher.jobs.submission import submission_of

__all__ = [
    "archive_folder",
    "claimed_day",
    "find_archived",
    "move_file",
    "same_bytes",
    "split_name",
    "unique_archive_name",
]

logger = logging.getLogger(__name__)


def claimed_day(claim_id: str) -> str:
    """The UTC day a claim was made, `YYYY/MM/DD`, from the time at the head of its id
    (`ID_TIME_FORMAT`): the same for the claim after any restart, whatever the clock says.

    Raises:
        ValueError: `claim_id` does not start with a time.
    """
    at = datetime.strptime(claim_id.partition("-")[0], ID_TIME_FORMAT)
    return at.strftime("%Y/%m/%d")


def archive_folder(archive: Path, layout: ArchiveLayout, claim_id: str, subfolder: str) -> Path:
    """The folder a claim's job file is archived in: the archive (`flat`) or its date folder
    in it (`daily`), then the job's inbox subfolder (`a/b`, "" for none).

    Raises:
        ValueError: `daily`, and `claim_id` does not start with a time.
    """
    folder = archive.joinpath(*claimed_day(claim_id).split("/")) if layout == "daily" else archive
    return folder.joinpath(*subfolder.split("/")) if subfolder else folder


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
    archive: Path,
    subfolder: str,
    name: str,
    claim_id: str,
    submission: str | None,
    max_bytes: int,
) -> Path | None:
    """The archived job file of the claim `claim_id` of a job named `name` from the inbox
    `subfolder`, in the route's `archive`; None if it is not there (removed since, or never
    archived).

    Its unique name (`unique_archive_name`, also without the stem cut) is that claim's alone.
    Its own name may hold another job's file (the first of that name was removed, and a later
    one took its name; or a job of the same name and day filed under the other layout): it
    counts only if its submission tag is the result's `submission` (both none, for a file not
    dropped by `dropflow submit`). Both layouts' folders (`archive_folder`) are looked in, the
    date folder first: a job archived before the layout changed is found where it was filed.
    """
    layouts: tuple[ArchiveLayout, ...] = ("daily", "flat")
    folders = []
    for layout in layouts:
        with contextlib.suppress(ValueError):  # no date in the id: flat only
            folders.append(archive_folder(archive, layout, claim_id, subfolder))
    stem, suffix = split_name(name)
    unique = dict.fromkeys((unique_archive_name(name, claim_id), f"{stem}.{claim_id}{suffix}"))
    for folder in folders:
        for candidate in unique:
            if _regular(folder / candidate):
                return folder / candidate
    for folder in folders:
        plain = folder / name
        if not _regular(plain):
            continue
        try:
            tag = submission_of(read_job_bytes(plain, max_bytes))
        except (JobError, OSError):
            continue
        if tag == submission:
            return plain
    return None


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False

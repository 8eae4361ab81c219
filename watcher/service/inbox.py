"""The inbox: watchdog events and scans in, complete job files out.

The watchdog handler only posts events to the service's event loop. `Inbox` decides when a
file is complete:

- a file renamed into the inbox (from inside it or from another folder) is complete when it
  arrives; with inotify, a file created without being opened (a move from another folder, a
  hard link) is such an arrival: a writer's open(O_CREAT) reports its open at once;
- where the platform reports close-after-write (Linux inotify), a file written in place is
  complete after its last writer closes it and `quiet_seconds` (`QUIET_SECONDS`) pass with no
  new open or write: a writer that appends in several open/close cycles (`echo a > f; echo b
  >> f`) is not cut at its first close. It is never taken while open for writing, however
  long the writer pauses;
- otherwise (other platforms, polling, `close_events=False`, the backlog at start-up, files
  found in a subfolder as it appears) it is complete once its size, mtime, ctime and inode
  have not changed for `settle_seconds`.

A recursive inbox also takes files in its subfolders (`Tree` says which); a scan hands out
what it finds in the inbox's `order`.

Each path is handed out once; the service claims it (moves it away) right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver, PollingObserverVFS

from watcher.defaults import QUIET_SECONDS
from watcher.service.tree import Order, Tree

__all__ = ["Inbox"]

logger = logging.getLogger(__name__)

_ARRIVAL_GRACE = 0.05
"""Seconds a created file must go without an open event to count as moved in, not written.
The kernel queues a writer's IN_CREATE and IN_OPEN in the same system call."""


@dataclass
class _Candidate:
    writing: bool = False  # opened or written, no close since
    closed: bool = False  # a writer closed it: complete after the quiet period
    arrived: float | None = None  # renamed or moved in: complete from this (monotonic) time on
    found: bool = False  # found in a new subfolder: a created event for it is no arrival
    signature: tuple[int, int, int, int] | None = None
    changed_at: float = field(default_factory=time.monotonic)  # the last event or stat change


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: posts each event to the loop and returns."""

    def __init__(self, post: Callable[[FileSystemEvent], None]) -> None:
        self._post = post

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._post(event)


class _OverflowAlarm(logging.Handler):
    """watchdog reports a lost-events overflow only as a log record; turn it into a rescan."""

    def __init__(self, alarm: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._alarm = alarm

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._alarm()


class Inbox:
    """Watches one folder (or tree) and hands each complete job file to `on_ready`, once."""

    def __init__(
        self,
        folder: Path,
        patterns: Iterable[str],
        *,
        settle_seconds: float,
        polling: bool,
        on_ready: Callable[[Path], None],
        close_events: bool | None = None,
        quiet_seconds: float = QUIET_SECONDS,
        recursive: bool = False,
        max_depth: int = 8,
        order: Order = "oldest",
    ) -> None:
        """Watch `folder` for files matching `patterns`; `on_ready` gets each complete one.

        Args:
            folder: The inbox; created if missing.
            patterns: Job file name patterns (`is_job_name`).
            settle_seconds: Where close events are not used, how long a file's size, mtime,
                ctime and inode must stay the same for it to count as complete.
            polling: Use watchdog's `PollingObserver` instead of the native one.
            on_ready: Called on the event loop with each complete file, once.
            close_events: `False` ignores close-after-write events even where the observer
                reports them (the settle time decides, as on macOS, Windows or polling);
                `None` or `True` use them where the observer has them (Linux inotify).
            quiet_seconds: With close events, how long a closed file must see no new open or
                write before it counts as complete.
            recursive: Also take files in subfolders (not dotfolders, not symlinked ones).
            max_depth: With `recursive`, the deepest subfolder level taken: `folder/a/b/x.yaml`
                is at depth 2.
            order: How a scan hands out the files it finds: `oldest` or `newest` first (by
                mtime), or by `name` (path).
        """
        self.folder = folder
        self.patterns = tuple(patterns)
        self.settle_seconds = settle_seconds
        self.quiet_seconds = quiet_seconds
        self.polling = polling
        self.on_ready = on_ready
        self._use_close_events = close_events is not False
        self._candidates: dict[Path, _Candidate] = {}
        self._handed_out: set[Path] = set()
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._close_events = False
        self._watched = folder
        self.tree = Tree(folder, self.patterns, recursive, max_depth, order)
        self._alarm = _OverflowAlarm(self._on_overflow)
        self.rescan_needed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching, then scan: watch first, so nothing written meanwhile is missed."""
        self._loop = asyncio.get_running_loop()
        self.folder.mkdir(parents=True, exist_ok=True)
        observer: BaseObserver
        if not self.polling:
            observer = Observer()
        elif self.tree.recursive:
            # PollingObserver stats with os.stat and so walks into symlinked folders.
            observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=0.5)
        else:
            observer = PollingObserver(timeout=0.5)
        name = type(observer).__name__
        # Only inotify reports close-after-write; elsewhere the settle time decides.
        self._close_events = self._use_close_events and name == "InotifyObserver"
        # watchdog does not follow a symlinked folder (IN_DONT_FOLLOW): watch where it leads,
        # and name what happens there by the inbox's own path (`_here`).
        self._watched = Path(os.path.realpath(self.folder))
        if self.tree.recursive:
            # watchdog 7.1 warns when a new folder's tree is watched twice (`mkdir -p a/b/c`:
            # the walk from a's event and c's own event both add c, with the same callback).
            # Harmless, but raised in its reader thread where warnings are errors, it kills it.
            warnings.filterwarnings(
                "ignore", r"Callback with id .* already exists", RuntimeWarning, r"watchdog\."
            )
        # Recursive, watchdog watches every subfolder, dotfolders and deep ones too (inotify:
        # IN_DONT_FOLLOW, and its walks skip symlinks); `Tree` filters what reaches us.
        observer.schedule(_Handler(self._post), str(self._watched), recursive=self.tree.recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        logging.getLogger("watchdog").addHandler(self._alarm)
        if self._close_events:
            rule = f"after their last close and {self.quiet_seconds:g}s with no open or write"
        else:
            rule = f"once unchanged for {self.settle_seconds:g}s"
        if self.tree.recursive:
            rule += f"; subfolders down to depth {self.tree.max_depth}"
        # Which rule is in force matters to whoever drops files in place: say it once.
        logger.info("inbox observer: %s; files written in place are taken %s", name, rule)
        self.scan()

    def stop(self) -> None:
        """Stop watching; files already handed out are unaffected."""
        logging.getLogger("watchdog").removeHandler(self._alarm)
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None

    def healthy(self) -> bool:
        """Whether the folder still exists and the observer thread is alive."""
        return self._observer is not None and self._observer.is_alive() and self.folder.is_dir()

    def restart(self) -> None:
        """Recreate the folder if it is gone and start a new observer, then rescan."""
        self.stop()
        self.start()

    def watch_count(self) -> int | None:
        """How many inotify watches this inbox's observer holds; None if not inotify or unknown.

        Reads watchdog internals (its emitter's `InotifyFD`, one per observer in watchdog 7).
        """
        observer = self._observer
        for emitter in observer.emitters if observer is not None else ():
            fd = getattr(getattr(emitter, "_inotify_fd", None), "_inotify_fd", None)
            if isinstance(fd, int):
                try:
                    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                except OSError:
                    return None
                return sum(line.startswith("inotify wd:") for line in info.splitlines())
        return None

    def done(self, path: Path) -> None:
        """The service is finished with `path` (claimed or given up): it may be seen again."""
        self._handed_out.discard(path)

    # -- events ----------------------------------------------------------------------------

    def _post(self, event: FileSystemEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed while we were posting; the service is stopping.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_event, event)

    def _on_overflow(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.rescan_needed.set)

    def _here(self, path: bytes | str) -> Path:
        """An event's path, named through the inbox's own path."""
        found = Path(os.fsdecode(path))
        try:
            return self.folder / found.relative_to(self._watched)
        except ValueError:
            return found

    def _on_event(self, event: FileSystemEvent) -> None:
        if self.tree.recursive and event.is_directory:
            self._on_folder_event(event)
        elif isinstance(event, FileMovedEvent | DirMovedEvent):
            self._candidates.pop(self._here(event.src_path), None)
            # A file inside a moved folder (watchdog's synthetic event) was not itself moved.
            self._track(self._here(event.dest_path), moved=not event.is_synthetic)
        else:
            self._on_file_event(event, self._here(event.src_path))

    def _on_folder_event(self, event: FileSystemEvent) -> None:
        # watchdog follows each folder event with synthetic ones for what is inside; the walk
        # of the top folder has seen all of that.
        if event.is_synthetic:
            return
        # The candidates of a folder deleted or moved away go at their next check (not found).
        if isinstance(event, DirMovedEvent):
            self._scan_new(self._here(event.dest_path))
        elif isinstance(event, DirCreatedEvent):
            self._scan_new(self._here(event.src_path))

    def _scan_new(self, folder: Path) -> None:
        """List a folder that was just made, moved or renamed (events can be left out for it).

        On inotify, watchdog 7 watches a new folder's tree from its own thread when the folder's
        IN_CREATE or IN_MOVED_TO arrives, then replays what it then finds inside as created
        events; files made before those watches existed get no event of their own. We rely on
        the watch being added, and list the folder ourselves rather than on the replay: a
        replayed created event looks like a moved-in file's, though the file may still be open
        for writing, so whatever this walk finds waits for the settle time (or its close).
        Polling lists the whole tree at each poll: there this walk only looks sooner.
        """
        if self.tree.folder_depth(folder) is None:
            return
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return  # a symlink to a folder: not followed
        except OSError:
            return
        for path in self.tree.walk(folder):
            if path not in self._handed_out:
                candidate = self._candidates.setdefault(path, _Candidate())
                candidate.found = True
                self._check(path, candidate)

    def _on_file_event(self, event: FileSystemEvent, path: Path) -> None:
        if isinstance(event, FileDeletedEvent):
            self._candidates.pop(path, None)
        elif isinstance(event, FileClosedEvent):
            # Without close events in use, a close is only one more sign of activity.
            self._track(path, closed=self._close_events, writing=False)
        elif isinstance(event, FileOpenedEvent | FileModifiedEvent):
            self._track(path, writing=self._close_events)
        elif isinstance(event, FileClosedNoWriteEvent):
            self._track(path, writing=False)
        elif isinstance(event, FileCreatedEvent | DirCreatedEvent):
            self._track(path, created=True)

    def _track(
        self,
        path: Path,
        *,
        moved: bool = False,
        closed: bool = False,
        writing: bool | None = None,
        created: bool = False,
    ) -> None:
        if path in self._handed_out or not self.tree.holds(path):
            return
        now = time.monotonic()
        candidate = self._candidates.setdefault(path, _Candidate())
        candidate.changed_at = now
        if moved:
            candidate.writing, candidate.arrived = False, now
        elif closed:
            candidate.writing, candidate.closed = False, True
        elif writing is not None:
            candidate.writing = writing
        if writing:
            # Written in place after all (reopened, or created by an open): its next close
            # starts the quiet period again.
            candidate.arrived, candidate.closed = None, False
        if created and self._close_events and not candidate.writing and not candidate.found:
            candidate.arrived = now + _ARRIVAL_GRACE
        if self._loop is not None:
            # Look again when the file may have become complete, rather than at the next tick.
            if created and candidate.arrived is not None:
                self._loop.call_later(_ARRIVAL_GRACE * 1.5, self._recheck, path)
            elif closed:
                self._loop.call_later(self.quiet_seconds + 0.01, self._recheck, path)
        if moved:
            self._check(path, candidate)

    def _recheck(self, path: Path) -> None:
        candidate = self._candidates.get(path)
        if candidate is not None:
            self._check(path, candidate)

    def scan(self) -> int:
        """Look at every job file in the tree (the backlog, or files whose events were lost).

        New candidates join in the inbox's `order`, so a backlog is handed out in it.
        """
        count = 0
        for path in self.tree.walk():
            if path in self._handed_out:
                continue
            count += 1
            self._candidates.setdefault(path, _Candidate())
        self.check_all()
        return count

    # -- readiness -------------------------------------------------------------------------

    def check_all(self) -> None:
        """Hand out every candidate that has become complete."""
        for path, candidate in list(self._candidates.items()):
            self._check(path, candidate)

    @property
    def pending(self) -> int:
        """How many files are being watched until they are complete."""
        return len(self._candidates)

    def _check(self, path: Path, candidate: _Candidate) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._candidates.pop(path, None)
            return
        except OSError as exc:
            logger.warning("cannot stat %s: %s", path, exc)
            return
        now = time.monotonic()
        # The inode and ctime too: a rewrite of the same size within one mtime tick, or a file
        # replaced by another with the same size and mtime (`mv`, `cp -p`), is a change.
        signature = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        if signature != candidate.signature:
            if candidate.signature is None:
                # First look: a file untouched for a while (the backlog) need not wait again.
                age = max(0.0, time.time() - info.st_mtime)
                candidate.changed_at = min(candidate.changed_at, now - age)
            else:
                candidate.changed_at = now
            candidate.signature = signature
        # Anything but a regular file (a link, a FIFO, a folder) is never "being written": it
        # goes straight on, to be turned down with an error result.
        regular = stat.S_ISREG(info.st_mode)
        if candidate.writing and regular:
            return
        quiet_for = now - candidate.changed_at
        if candidate.arrived is not None and now >= candidate.arrived:
            complete = True
        elif candidate.closed:
            complete = quiet_for >= self.quiet_seconds
        else:
            complete = quiet_for >= self.settle_seconds
        if regular and not complete:
            return
        del self._candidates[path]
        self._handed_out.add(path)
        self.on_ready(path)

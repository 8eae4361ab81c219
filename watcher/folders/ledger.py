"""The results ledger: one line per published result, kept by the service in each route's
processing folder, so that `dropflow status` counts the last day's results without opening
them (parsing every result file of a day took 70 s at 100,000 results).

Layout, in `<processing>/.dropflow-ledger/`:

- `<YYYYMMDDHH>.log`: the results whose file time falls in that UTC hour, one line each:
  `<file time> <status> <route> <claim id> <JSON of the fields status shows>`;
- `began`: made when a service first kept the ledger here; its own file time is the time from
  which every result of the route has a line (older results are only in the files);
- `pruned`: the file time below which hour files were removed (once older than a day, and not
  needed for the newest ten);
- `<YYYYMMDDHH>.sum`: a past hour's counts by route and status, and the size of its hour file
  then: `status` counts a day of heavy use from these (a million lines took 1.5 s of CPU,
  their summaries 0.1 s), and reads an hour file whose size has changed since.

Why these choices:

- Plain append-only text, one writer per route (the folders' lock), one `write` per line: it
  works on every platform and on network file systems, where SQLite's locks and WAL do not.
- Hour files: `status` reads only the last hour's lines (their first four fields; the JSON of
  the ten it shows only) and the day's summaries; removing old lines is removing old files.
  A claim's lines, repeated by a recovery, all carry its result file's time: they are in one
  hour file, so an hour's summary counts each result once.
- Times are the result files' own times (the file server's clock, as the `began` file's is),
  never this machine's clock: a ledger written from several machines agrees with the files.
- No fsync per line. The line is appended before the claim is finished, and a recovered claim
  appends its line again (`status` keeps one line per claim id), so a crashed service loses
  none. A crash of the whole machine can lose the lines of the last seconds' finished claims:
  `status` then counts those few results less, until they are a day old.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.folders.durable import write_atomic

__all__ = [
    "FIELDS",
    "LEDGER_FOLDER",
    "Ledger",
    "LedgerState",
    "Line",
    "Reading",
    "hour_file",
    "hour_start",
    "lines_since",
    "stamp",
    "state",
]

logger = logging.getLogger(__name__)

LEDGER_FOLDER = ".dropflow-ledger"
BEGAN = "began"
PRUNED = "pruned"
_SUFFIX = ".log"
DAY = 24 * 3600.0
KEEP = DAY + 3 * 3600.0
"""Hour files younger than this are always kept: the day, and a margin for the clocks of the
machines that run `status` (theirs may lag the file server's)."""
KEEP_NEWEST = 10
"""Older hour files are kept while the lines in them are needed for status's newest ten."""
FIELDS = ("job", "status", "finished_at", "message", "submission")
"""The result's fields a line keeps (with the file's path), for status's newest ten."""

Line = tuple[str, str, str, str]
"""A line's (file time, status, route, claim id). The time is written by `stamp`, in a fixed
width, so that times compare as text (no float per line)."""

_lock = threading.Lock()  # every route's pipeline appends from worker threads of one process


def hour_file(mtime: float) -> str:
    """The name of the hour file holding a result of file time `mtime`."""
    return time.strftime("%Y%m%d%H", time.gmtime(mtime)) + _SUFFIX


def _hour_files(folder: Path) -> list[str]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n.endswith(_SUFFIX) and len(n) == 10 + len(_SUFFIX))


@dataclass(frozen=True)
class LedgerState:
    """What a route's ledger holds: every result from `covers_from` on (file time); None: no
    ledger, every result is only in the files."""

    began: float | None
    pruned: float | None

    @property
    def covers_from(self) -> float | None:
        if self.began is None:
            return None
        return max(self.began, self.pruned or self.began)


def state(processing: Path) -> LedgerState:
    """The ledger's start and pruning, read from its folder."""
    folder = processing / LEDGER_FOLDER
    try:
        began: float | None = os.stat(folder / BEGAN).st_mtime
    except OSError:
        began = None
    pruned = None
    with contextlib.suppress(OSError, ValueError):
        pruned = float((folder / PRUNED).read_text("ascii"))
    return LedgerState(began, pruned)


def stamp(mtime: float) -> str:
    """A file time as a line holds it: text that sorts as the time does (until 2286)."""
    return f"{mtime:017.6f}"


_LINE = re.compile(r"^(\S+) (\S+) (\S+) (\S+) \{.*\}$", re.MULTILINE)
"""A whole line (one cut short by a crash has no closing brace), its first four fields."""


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("ascii", "replace")
    except FileNotFoundError:
        return ""


def lines_since(processing: Path, since: float) -> Iterator[str]:
    """The lines of the hour files from the one holding `since` on (and any later ones, some
    dated ahead by a clock)."""
    folder = processing / LEDGER_FOLDER
    first = hour_file(since)
    for name in _hour_files(folder):
        if name >= first:
            yield from _read(folder / name).splitlines()


class Reading:
    """Lines read from ledgers, one per claim id, and on demand the fields a line shows.

    A regular expression over each file's text finds the lines (in C: about ten times faster
    than splitting 100,000 lines in Python); only the lines shown have their JSON parsed.
    """

    def __init__(self) -> None:
        self.lines: dict[str, Line] = {}
        self.summed: Counter[tuple[str, str]] = Counter()
        """Results counted from hour summaries, by (route, status): all older than an hour."""
        self._texts: dict[tuple[Path, str], str] = {}
        self._fields: dict[str, dict[str, Any]] = {}
        self._summed: list[tuple[Path, str]] = []

    def read(
        self,
        processing: Path,
        since: float,
        *,
        before: bool = False,
        summed_from: float | None = None,
        summed_before: float | None = None,
    ) -> None:
        """Add the lines of the hour files from the one holding `since` on (and any later
        ones, dated ahead by a clock), or with `before`, those of the older ones (kept for the
        newest ten). With `summed_before`, an hour file wholly from `summed_from` (default
        `since`) to that time is counted from its summary instead, while the summary is up to
        date (`summed`)."""
        folder = processing / LEDGER_FOLDER
        first = hour_file(since)
        for name in _hour_files(folder):
            if (name < first) != before:
                continue
            if summed_before is not None and self._sum(
                folder, name, summed_from or since, summed_before
            ):
                self._summed.append((processing, name))
                continue
            self._parse(processing, name, keep=before)

    def read_summed(self) -> None:
        """Add the lines of the hour files `read` counted from their summaries."""
        for processing, name in self._summed:
            self._parse(processing, name, keep=True)
        self._summed = []

    def _sum(self, folder: Path, name: str, since: float, until: float) -> bool:
        start = hour_start(name)
        if start < since or start + 3600 > until:
            return False
        summary = _summary(folder, name)
        if summary is None:
            return False
        for route, status, count in summary:
            self.summed[(route, status)] += count
        return True

    def _parse(self, processing: Path, name: str, *, keep: bool) -> None:
        """Add an hour file's lines; with `keep`, not over the lines of claims already read."""
        text = self._texts[(processing, name)] = _read(processing / LEDGER_FOLDER / name)
        found = {line[3]: line for line in _LINE.findall(text)}
        if keep:
            found.update(self.lines)
        self.lines.update(found)

    def add(self, line: Line, fields: dict[str, Any]) -> None:
        """Add a result read from its file (unless its claim has a line)."""
        if line[3] not in self.lines:
            self.lines[line[3]] = line
            self._fields[line[3]] = fields

    def fields(self, processing: Path, line: Line) -> dict[str, Any] | None:
        """The fields `line` (of the ledger in `processing`) shows; None if unreadable."""
        claim = line[3]
        if claim in self._fields:
            return self._fields[claim]
        text = self._texts.get((processing, hour_file(float(line[0]))), "")
        at = text.rfind(f" {claim} {{")  # the newest lines are at the end
        if at < 0:
            return None
        start = at + len(claim) + 2
        end = text.find("\n", start)
        try:
            data = json.loads(text[start : end if end >= 0 else len(text)])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


class Ledger:
    """The writer of one route's ledger: the service's pipeline appends a line per result."""

    def __init__(self, processing: Path, route: str) -> None:
        self.folder = processing / LEDGER_FOLDER
        self.route = route
        self._checked: set[str] = set()
        self._pruned_hour = ""

    def begin(self) -> None:
        """Make the ledger if there is none, recording when it began. (Old hour files are
        removed and past hours summed at the first line appended, then once an hour: off the
        start's path.)"""
        self.folder.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError), open(self.folder / BEGAN, "xb") as handle:
            handle.write(b"every result from this file's time on has a line here\n")

    def append(self, result: Path, relative: str, claim_id: str, data: Mapping[str, Any]) -> None:
        """Record the published result `result` (`relative`: its path in the route's results
        folder) of the claim `claim_id`, whose fields are `data`."""
        try:
            mtime = os.stat(result).st_mtime
        except FileNotFoundError:
            return  # removed before its recovery came to record it: nothing to count
        shown = {key: data.get(key) for key in FIELDS}
        shown["file"] = relative
        status = "".join(str(data.get("status")).split()) or "?"
        when = stamp(mtime)
        line = f"{when} {status} {self.route} {claim_id} {json.dumps(shown)}\n"
        name = hour_file(float(when))  # as readers find it again, from the rounded time
        with _lock:
            if not self.folder.is_dir():
                self.begin()  # removed by hand: it begins again, from now
            self._write(name, line.encode("ascii"))
            hour = hour_file(time.time())
            if hour != self._pruned_hour:
                self.prune(time.time())

    def _write(self, name: str, data: bytes) -> None:
        path = self.folder / name
        with open(path, "ab") as handle:
            if name not in self._checked:
                # A line cut by a crash must not swallow the next one.
                self._checked.add(name)
                if handle.tell() > 0 and not _ends_with_newline(path):
                    data = b"\n" + data
            handle.write(data)

    def prune(self, now: float) -> None:
        """Remove the hour files older than a day and a margin, but those holding the newest
        ten results before them."""
        self._pruned_hour = hour_file(now)
        self.summarise(now)
        first = hour_file(now - KEEP)
        older = [name for name in reversed(_hour_files(self.folder)) if name < first]
        claims: set[str] = set()
        for index, name in enumerate(older):
            if len(claims) >= KEEP_NEWEST:
                self._remove(older[index:], older[index - 1])
                return
            claims.update(line[3] for line in _LINE.findall(_read(self.folder / name)))

    def summarise(self, now: float) -> None:
        """Write the counts of each past hour file of the day that has no summary of its
        present size, so that `status` reads a day of heavy use from 24 small files."""
        first = hour_file(now - KEEP)
        current = hour_file(now)
        for name in _hour_files(self.folder):
            if not first <= name < current or _summary(self.folder, name) is not None:
                continue
            path = self.folder / name
            size = os.stat(path).st_size
            with open(path, "rb") as handle:
                text = handle.read(size).decode("ascii", "replace")
            lines = {line[3]: line for line in _LINE.findall(text)}
            counts = Counter((line[2], line[1]) for line in lines.values())
            summary = {"size": size, "counts": [[r, s, n] for (r, s), n in counts.items()]}
            tmp = write_atomic(self.folder, json.dumps(summary).encode("ascii"))
            os.replace(tmp, self.folder / _summary_name(name))

    def _remove(self, names: list[str], oldest_kept: str) -> None:
        below = hour_start(oldest_kept)
        tmp = write_atomic(self.folder, f"{below}".encode("ascii"))
        os.replace(tmp, self.folder / PRUNED)
        for name in names:
            for each in (name, _summary_name(name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / each)
        logger.debug("ledger: removed %d hour file(s) in %s", len(names), self.folder)


def hour_start(name: str) -> float:
    """The POSIX time at which the hour of an hour file begins."""
    return float(calendar.timegm(time.strptime(name[: -len(_SUFFIX)], "%Y%m%d%H")))


def _summary_name(name: str) -> str:
    return name[: -len(_SUFFIX)] + ".sum"


def _summary(folder: Path, name: str) -> list[tuple[str, str, int]] | None:
    """An hour file's counts, (route, status, count), if its summary is of its present size
    (lines appended since, by a recovery or a result of that hour published late, make it
    out of date)."""
    try:
        summary = json.loads((folder / _summary_name(name)).read_bytes())
        if summary["size"] != os.stat(folder / name).st_size:
            return None
        return [(str(r), str(s), int(n)) for r, s, n in summary["counts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"

"""`dropflow status`: what is going on in a set of folders, read from the folders alone.

It works whether or not a service runs, and changes nothing (the only lock it touches is
`lock.is_held`'s momentary probe):

- `service`: whether a live service holds the folders' lock, and its owner record (pid, host,
  since when, runner, Prefect API);
- `inbox`: the job files waiting there;
- `in_flight`: the claims in `processing` (`<claim id>.<attempt>/`): the job, its attempt, its
  age since it was first claimed, its state (`claimed`: running, or waiting for a run slot;
  `finishing`: its result is staged), and its flow run: the name it gets (from the job file),
  and its id once its result is staged (the service records no flow run id before that);
- `results`: results published (by file time) in the last hour and the last day, by status,
  and the newest ten.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, TextIO

from watcher.config.routes import Route
from watcher.config.settings import Settings
from watcher.folders import ledger, pruned
from watcher.folders.claims import CLAIM_FOLDER, STAGED_RESULT, SUBFOLDER
from watcher.folders.lock import is_held, read_owner
from watcher.folders.results import read_result
from watcher.jobs.messages import one_line
from watcher.jobs.model import JobError
from watcher.jobs.names import ID_TIME_FORMAT, is_job_name
from watcher.jobs.reading import parse_job, read_job_bytes

__all__ = ["gather", "render", "result_files"]

NEWEST = 10
"""How many of the newest results `status` shows."""
STATUSES = ("completed", "canceled", "error")
DAY = 24 * 3600.0


def _service(settings: Settings) -> dict[str, Any] | None:
    """The service that holds the folders: any route's lock held means served (a service takes
    every route's lock), and its owner record is in every route's processing folder."""
    routes = list(settings.served.values())
    if not any(is_held(route.inbox, route.processing) for route in routes):
        return None
    for route in routes:
        owner = read_owner(route.processing)
        if owner is not None:
            return asdict(owner)
    return {
        "pid": None,
        "host": None,
        "since": None,
        "runner": None,
        "api": None,
        "runner_down": None,
    }


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries; none if it does not exist (yet)."""
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(folder: Path, depth: int, under: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """The entries that are not folders in `folder` and, `depth` levels down, in its
    subfolders, each with its path relative to `folder`; dotfolders are skipped and symbolic
    links never followed, as a recursive route's inbox does."""
    for entry in _entries(folder):
        relative = f"{under}{entry.name}"
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if not is_folder:
            yield relative, entry
        elif depth > 0 and not entry.name.startswith("."):
            yield from _files(Path(entry.path), depth - 1, f"{relative}/")


def _depth(route: Route) -> int:
    return route.max_depth if route.recursive else 0


def _age(seconds: float) -> float:
    """An age to show: never below 0, though a file's time or a claim's (written by another
    machine, or before the clock was set back) may be in the future."""
    return max(0.0, round(seconds, 1))


def _waiting(route: Route, patterns: tuple[str, ...]) -> list[tuple[float, str]]:
    """The job files waiting in the route's inbox (and its subfolders, for a recursive route):
    (mtime, path relative to the inbox), oldest first."""
    waiting: list[tuple[float, str]] = []
    for relative, entry in _files(route.inbox, _depth(route)):
        if is_job_name(entry.name, patterns):
            try:
                waiting.append((entry.stat(follow_symlinks=False).st_mtime, relative))
            except FileNotFoundError:
                continue
    waiting.sort()
    return waiting


def _inbox(
    folder: Path | None, waiting: list[tuple[float, str, str]], now: float
) -> dict[str, Any]:
    waiting = sorted(waiting)
    return {
        "folder": str(folder) if folder else None,
        "backlog": len(waiting),
        "oldest_age_s": _age(now - waiting[0][0]) if waiting else None,
        "files": [_shown(route, name, folder) for _, route, name in waiting[:NEWEST]],
    }


def _shown(route: str, relative: str, folder: Path | None) -> str:
    """A path relative to the top-level folder: with several routes (no one folder), the
    route's name first."""
    return relative if folder is not None else f"{route}/{relative}"


def _in_flight(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    claims: list[dict[str, Any]] = []
    for entry in sorted(_entries(settings.processing), key=lambda e: e.name):
        match = CLAIM_FOLDER.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            names = [n for n in os.listdir(entry.path) if not n.startswith(".")]
        except FileNotFoundError:
            continue  # finished meanwhile
        staged = read_result(Path(entry.path) / STAGED_RESULT) or {}
        claimed = datetime.strptime(match["at"], ID_TIME_FORMAT).replace(tzinfo=UTC)
        claim = {
            "job": names[0] if names else None,
            "route": settings.route.name,
            "claim_id": match["id"],
            "attempt": int(match["attempt"]),
            "age_s": _age((now - claimed).total_seconds()),
            "state": "finishing" if staged else "claimed",
            "flow_run_id": staged.get("flow_run_id"),
            "flow_run_name": staged.get("flow_run_name")
            or _run_name(Path(entry.path), names, settings),
        }
        with contextlib.suppress(OSError):
            claim["subfolder"] = os.fsdecode((Path(entry.path) / SUBFOLDER).read_bytes())
        claims.append(claim)
    return claims


def _run_name(folder: Path, names: list[str], settings: Settings) -> str | None:
    """The name the job's flow run gets (its `name`, or the file's stem), read from the claimed
    job file: what to look for in the Prefect UI while its id is not recorded yet."""
    if not names:
        return None
    try:
        job = parse_job(
            read_job_bytes(folder / names[0], settings.max_job_bytes), settings.job_limits
        )
    except (JobError, OSError):
        return None
    return job.name or os.fsencode(Path(names[0]).stem).decode("utf-8", "replace")


def result_files(routes: list[Route]) -> list[tuple[float, Path, list[tuple[str, str]]]]:
    """Every result file of the routes, newest first: (mtime, path, the routes whose results
    folder holds it, each with the file's path relative to that folder). Two routes may share
    a results folder, or one's lie in another's recursive one: a file is listed once."""
    found: dict[Path, tuple[float, Path, list[tuple[str, str]]]] = {}
    for route in routes:
        for relative, entry in _files(route.results, _depth(route)):
            if entry.name.startswith(".") or ".result" not in entry.name:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            key = Path(os.path.realpath(entry.path))
            found.setdefault(key, (mtime, Path(entry.path), []))[2].append((route.name, relative))
    return sorted(found.values(), key=lambda item: item[0], reverse=True)


def _results(
    routes: list[Route], folder: Path | None, now: float
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The results of the last hour and day, in all and by route (last hour), and the newest.

    Read from the routes' ledgers (`watcher.folders.ledger`); the result files themselves are
    read only where a ledger does not cover the day (none yet, or begun less than a day ago),
    and for the newest ten when the ledgers hold fewer. Results older than a route's retention
    cut-off (`watcher.folders.pruned`) are gone from its folder and are not counted.
    """
    since = now - DAY
    states = {route.name: ledger.state(route.processing) for route in routes}
    cutoffs = {route.name: pruned.read_cutoff(route.processing) for route in routes}
    cuts = {name: ledger.stamp(cut) for name, cut in cutoffs.items() if cut is not None}
    uncovered = [route for route in routes if not _covers(states[route.name], since)]
    reading = ledger.Reading()
    for processing, name in _processing_folders(routes).items():
        # Hour summaries hold no claim ids: only where no file is read (a claim's lines are
        # all in one hour file, its result's), and for hours wholly after the cut-off.
        summed_before = None if uncovered else now - 3600
        start = max(since, cutoffs[name] or since)
        reading.read(processing, since, summed_from=start, summed_before=summed_before)
    if uncovered:
        _from_files(uncovered, routes, states, reading, since)
    day_from, hour_from = ledger.stamp(since), ledger.stamp(now - 3600)
    # One pass in C where it can be: times compare as text, counted by a Counter.
    counted = Counter(
        (line[2], line[1], line[0] >= hour_from)
        for line in reading.lines.values()
        if line[0] >= day_from and line[0] >= cuts.get(line[2], "")
    )
    hour = dict.fromkeys(STATUSES, 0)
    day = dict.fromkeys(STATUSES, 0)
    by_route = {route.name: dict.fromkeys(STATUSES, 0) for route in routes}
    counted.update({(route, status, False): n for (route, status), n in reading.summed.items()})
    for (route, status, recent), count in counted.items():
        if status not in day:
            continue
        day[status] += count
        if recent:
            hour[status] += count
            if route in by_route:
                by_route[route][status] += count
    results = {
        "folder": str(folder) if folder else None,
        "last_hour": hour,
        "last_day": day,
        "newest": _newest(routes, folder, reading, cuts, since),
    }
    return results, by_route


def _processing_folders(routes: list[Route]) -> dict[Path, str]:
    """Each route's processing folder, once, with its route (two routes never share one, and
    a ledger read twice would count nothing twice: lines are kept by claim id)."""
    return {route.processing.resolve(): route.name for route in reversed(routes)}


def _covers(state: ledger.LedgerState, since: float) -> bool:
    start = state.covers_from
    return start is not None and start <= since


def _from_files(
    uncovered: list[Route],
    routes: list[Route],
    states: dict[str, ledger.LedgerState],
    reading: ledger.Reading,
    since: float,
) -> None:
    """Add the results of the last day that the `uncovered` routes' ledgers lack, read from
    their files (only those older than the ledger's start are parsed)."""
    names = {route.name for route in routes}
    mine = {route.name for route in uncovered}

    def in_ledger(route: str, mtime: float) -> bool:
        start = states[route].covers_from if route in states else None
        return start is not None and mtime >= start

    for mtime, path, owners in result_files(uncovered):
        if mtime < since:
            break
        if all(in_ledger(name, mtime) for name, _ in owners):
            continue
        data = read_result(path) or {}
        whose = data.get("route")
        if whose in names and whose not in mine:
            continue  # another route's result in a shared folder: its ledger has it
        route, relative = next(((n, rel) for n, rel in owners if n == whose), owners[0])
        if in_ledger(route, mtime):
            continue
        claim = str(data.get("claim_id") or f"file {path}")
        shown = {**{key: data.get(key) for key in ledger.FIELDS}, "file": relative}
        reading.add((ledger.stamp(mtime), str(data.get("status")), route, claim), shown)


def _newest(
    routes: list[Route],
    folder: Path | None,
    reading: ledger.Reading,
    cuts: dict[str, str],
    since: float,
) -> list[dict[str, Any]]:
    """The newest ten results whose files are still there: from the last day's, then from the
    older hour files the ledgers keep for this, then (fewer still) from the files."""
    results = {route.name: route.results for route in routes}
    processing = {route.name: route.processing.resolve() for route in routes}
    newest: list[dict[str, Any]] = []
    shown: set[str] = set()

    def take(lines: list[ledger.Line]) -> None:
        for line in lines:
            if len(newest) >= NEWEST:
                return
            mtime, _, route, claim = line
            if claim in shown or route not in results or mtime < cuts.get(route, ""):
                continue
            data = reading.fields(processing[route], line)
            if data is None:
                continue
            relative = str(data.get("file"))
            if not os.path.lexists(results[route] / relative):
                continue  # removed by hand, or by retention after status read its cut-off
            shown.add(claim)
            newest.append(_item(route, relative, folder, data))

    by_time = itemgetter(0)
    take(heapq.nlargest(NEWEST, reading.lines.values(), key=by_time))
    if len(newest) < NEWEST:  # files missing: look further
        take(sorted(reading.lines.values(), key=by_time, reverse=True))
    if len(newest) < NEWEST:
        reading.read_summed()
        take(sorted(reading.lines.values(), key=by_time, reverse=True))
    if len(newest) < NEWEST:
        for folder_ in _processing_folders(routes):
            reading.read(folder_, since, before=True)
        take(sorted(reading.lines.values(), key=by_time, reverse=True))
    if len(newest) < NEWEST:
        # Fewer than ten in the ledgers (a young ledger, results removed by hand): the files.
        newest = []
        for _, path, owners in result_files(routes):
            if len(newest) >= NEWEST:
                break
            data = read_result(path) or {}
            route, relative = next(
                ((n, rel) for n, rel in owners if n == data.get("route")), owners[0]
            )
            newest.append(_item(route, relative, folder, data))
    return newest


def _item(route: str, relative: str, folder: Path | None, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": _shown(route, relative, folder),
        "route": route,
        "job": data.get("job"),
        "status": data.get("status"),
        "finished_at": data.get("finished_at"),
        "message": data.get("message"),
        "submission": data.get("submission"),
    }


def gather(settings: Settings) -> dict[str, Any]:
    """The status of the folders of `settings`, as `dropflow status --json` prints it: for a
    config with `routes`, a `routes` mapping too, and the top-level counts are the totals."""
    routes = list(settings.served.values())
    one = routes[0] if len(routes) == 1 else None
    now = datetime.now().timestamp()
    waiting = {route.name: _waiting(route, settings.patterns) for route in routes}
    flights = {
        route.name: _in_flight(settings.for_route(route.name), datetime.now(UTC))
        for route in routes
    }
    results, by_route = _results(routes, one.results if one else None, now)
    status: dict[str, Any] = {
        "service": _service(settings),
        "inbox": _inbox(
            one.inbox if one else None,
            [(t, name, rel) for name, files in waiting.items() for t, rel in files],
            now,
        ),
        "in_flight": [claim for claims in flights.values() for claim in claims],
        "results": results,
    }
    if settings.routes is not None:
        status["routes"] = {
            route.name: {
                "inbox": str(route.inbox),
                "waiting": len(waiting[route.name]),
                "in_flight": len(flights[route.name]),
                "results": by_route[route.name],
            }
            for route in routes
        }
    return status


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES)


def render(status: dict[str, Any], out: TextIO) -> None:
    """Print `status` (from `gather`) for people; with several routes, one line per route and
    each file named after its route."""
    service, inbox = status["service"], status["inbox"]
    routes: dict[str, dict[str, Any]] = status.get("routes") or {}
    several = inbox["folder"] is None
    lines = []
    if service is None:
        where = f"routes {', '.join(routes)}" if several else inbox["folder"]
        lines.append(f"service:    none is serving {where}")
    else:
        lines.append(
            f"service:    serving, pid {service['pid']} on {service['host']}, since "
            f"{service['since']}"
        )
        lines.append(f"            runner {service['runner'] or '?'}: {service['api'] or '?'}")
        if service.get("runner_down"):
            lines.append(f"            runner DOWN: {service['runner_down']}; jobs wait")
    if several:
        lines.append(f"routes:     {len(routes)}")
        width = max(len(name) for name in routes)
        for name, route in routes.items():
            lines.append(
                f"  {name:<{width}}  {route['waiting']} waiting, {route['in_flight']} in flight, "
                f"last hour {_counts(route['results'])}  (inbox {route['inbox']})"
            )
    oldest = f", oldest {inbox['oldest_age_s']:g} s" if inbox["backlog"] else ""
    where = f"{len(routes)} routes" if several else inbox["folder"]
    lines.append(f"inbox:      {inbox['backlog']} waiting in {where}{oldest}")
    lines.extend(f"              {name}" for name in inbox["files"])
    lines.append(f"in flight:  {len(status['in_flight'])}")
    for claim in status["in_flight"]:
        run = f"{claim['flow_run_name'] or '-'} ({claim['flow_run_id'] or 'id not known yet'})"
        job = "/".join(filter(None, [claim.get("subfolder"), claim["job"]]))
        job = f"{claim['route']}/{job}" if several else job
        lines.append(
            f"              {job}  attempt {claim['attempt']}  age {claim['age_s']:g} s"
            f"  {claim['state']}  flow run {run}  (claim {claim['claim_id']})"
        )
    results = status["results"]
    lines.append(f"results:    {results['folder'] if not several else f'{len(routes)} routes'}")
    lines.append(f"  last hour:  {_counts(results['last_hour'])}")
    lines.append(f"  last day:   {_counts(results['last_day'])}")
    lines.append(f"  newest {len(results['newest'])}:")
    for item in results["newest"]:
        lines.append(
            f"              {item['finished_at']}  {item['status']:<9}  {item['file']}  "
            f"{item['message']}"
        )
    for line in lines:
        print(one_line(line), file=out)

"""`dropflow retry`: submit the archived job of a finished result again, as a new submission.

The results are given as files (`RESULT_FILE...`) or chosen (`--status canceled|error --since
DURATION`: the route's results of that status whose file is that recent, except those a later
result already retries). For each one:

- its route is the one the result names; its job file is found in that route's archive, in its
  claim's date folder (or the archive itself, `flat`), in the same subfolder, under the job's
  name or, for a name that was taken, `<stem>.<claim id><ext>`
  (`watcher.folders.archive.find_archived`);
- it is refused when its job would fail the same way (the service refused the file itself: it
  never ran), when it completed (unless `--completed`), and when its archived file is gone or is
  no longer valid under the route's rules;
- otherwise its bytes (with `--job-timeout`, its `timeout` replaced) get a retry tag naming the
  result (`# dropflow-retry-of: <path relative to the route's results folder>`, see
  `watcher.jobs.submission`) and are submitted exactly as `dropflow submit` does
  (`watcher.cli.submit.deliver`): into the route's inbox, or the same subfolder of it, under the
  job's own name, so that its result lands beside the one it retries and carries `retry_of`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from watcher.cli.routes import inbox_route, listed
from watcher.cli.status import result_files
from watcher.cli.submit import (
    EXIT_CODES,
    EXIT_NO_SERVICE,
    Screen,
    Submission,
    Target,
    deliver,
    finish,
)
from watcher.cli.validate import Checked, check_bytes, job_limits
from watcher.config.settings import Settings
from watcher.folders.archive import archive_folder, find_archived, unique_archive_name
from watcher.folders.claims import CLAIM_FOLDER
from watcher.folders.results import read_result
from watcher.jobs.messages import one_line
from watcher.jobs.model import JobError
from watcher.jobs.reading import read_document, read_job_bytes
from watcher.jobs.submission import retry_tagged, valid_retry_of

__all__ = ["NotRetried", "duration", "refusal", "refused_job", "retry", "select", "with_timeout"]

logger = logging.getLogger(__name__)

STATUSES = ("completed", "canceled", "error")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class NotRetried(Exception):
    """A result whose job is not submitted again; the message says why."""


@dataclass(frozen=True)
class Finished:
    """A finished job's result, to retry."""

    given: str
    """The result file as given on the command line (or found, for `--status`)."""
    data: Mapping[str, Any]
    settings: Settings
    """Its route's settings."""
    relative: str
    """Its path relative to the route's results folder, `/` between parts: the `retry_of` of
    the new result."""


def duration(text: str) -> float:
    """`30m`, `2h`, `1d`, `45s` or a number of seconds, in seconds.

    Raises:
        ValueError: not such a duration, or not above 0.
    """
    match = _DURATION.match(text)
    if not match or not float(match[1]) > 0:
        raise ValueError(f"must be a duration like 30m, 2h or 1d (s, m, h, d), got {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def refused_job(result: Mapping[str, Any]) -> bool:
    """Whether the service turned the result's job file itself down: it never ran, and would
    be turned down the same way again.

    `JobPipeline._run` (`watcher.service.pipeline`) refuses a file it cannot read or check, a
    subfolder it cannot name and parameters the flow does not take with an error result whose
    message is `<job>: <why>` and which names no flow run. Its other errors without a flow run
    (the attempt cap, a runner that failed) word their message otherwise, and an internal error
    reading the file (`<job>: internal error reading it: ...`) is dropflow's fault, not the
    file's.
    """
    if result.get("status") != "error" or result.get("flow_run_id"):
        return False
    message, job = str(result.get("message", "")), str(result.get("job", ""))
    return message.startswith(f"{job}: ") and not message.startswith(f"{job}: internal error")


def refusal(result: Mapping[str, Any], *, completed: bool = False) -> str | None:
    """Why the result's job is not submitted again (None: it may be); `completed`: a completed
    result's job may run again."""
    if result.get("status") == "completed" and not completed:
        return "it completed: there is nothing to retry (--completed runs its job again anyway)"
    if refused_job(result):
        return (
            f"its job file was refused by the service and never ran ({result.get('message')}); "
            "it would fail the same way: fix the file, then `dropflow submit` it"
        )
    return None


def _problem(data: Any) -> str | None:
    """What makes `data` (a YAML file's mapping) no result file, or None."""
    if not isinstance(data, dict):
        return "not a dropflow result file"
    job, claim_id = data.get("job"), data.get("claim_id")
    if not isinstance(job, str) or job in ("", ".", "..") or "/" in job or "\\" in job:
        return "not a dropflow result file (no job file name)"
    if not isinstance(data.get("route", ""), str):
        return "not a dropflow result file (route)"
    if data.get("status") not in STATUSES:
        return f"not a dropflow result file (status {data.get('status')!r})"
    # A claim id is what names its claim folder, with the attempt after it.
    if not isinstance(claim_id, str) or not CLAIM_FOLDER.fullmatch(f"{claim_id}.1"):
        return "not a dropflow result file (no claim_id)"
    subfolder = data.get("subfolder", "")
    parts = subfolder.split("/") if isinstance(subfolder, str) else None
    if parts is None or (subfolder and any(p in ("", ".", "..") or "\\" in p for p in parts)):
        return f"not a dropflow result file (subfolder {subfolder!r})"
    return None


def read_finished(given: str, settings: Settings, route: str | None) -> Finished:
    """The result file `given` (a path), with its route's settings.

    Raises:
        NotRetried: no such file, not a result, of no route of this config (or not of
            `route`), or not in its route's results folder.
    """
    path = Path(given)
    if path.is_symlink():
        raise NotRetried("a symbolic link: give the result file itself")
    if not path.exists():
        raise NotRetried("no such file")
    if not path.is_file():
        raise NotRetried("not a result file")
    data = read_result(path)
    problem = _problem(data)
    if problem is not None:
        raise NotRetried(problem)
    assert data is not None
    served = settings.served
    name = data.get("route")
    if name is None:  # a result from before routes: the config's only route
        if len(served) != 1:
            raise NotRetried(f"it names no route, and this config has several: {listed(settings)}")
        name = next(iter(served))
    if name not in served:
        raise NotRetried(f"its route {name!r} is no route of this config: {listed(settings)}")
    if route is not None and name != route:
        raise NotRetried(f"a result of route {name}, not of --route {route}")
    own = settings.for_route(str(name))
    try:
        relative = path.resolve().relative_to(own.results.resolve()).as_posix()
    except ValueError:
        raise NotRetried(
            f"not in route {name}'s results folder ({own.results}): a retry names the result "
            "it retries by its place there"
        ) from None
    return Finished(given, data, own, relative)


def select(
    settings: Settings, route: str | None, status: str, since: float, now: float | None = None
) -> tuple[list[Finished], int]:
    """`--status STATUS --since SECONDS`: the results of that status whose file is at most
    `since` seconds old (the file's time, as `dropflow status` counts), of `route` or of every
    route, oldest first; and how many of them were left out as retried already (a result
    since then names them in `retry_of`)."""
    cutoff = (time.time() if now is None else now) - since
    names = [route] if route is not None else list(settings.served)
    routes = [settings.served[name] for name in names]
    found: list[Finished] = []
    retried: set[tuple[str, str]] = set()
    for mtime, path, owners in result_files(routes):
        if mtime < cutoff:
            break  # newest first
        data = read_result(path)
        if _problem(data) is not None:
            continue
        assert data is not None
        mine = dict(owners)
        name = data.get("route", owners[0][0])
        if name not in mine:
            continue  # a shared results folder: another route's result
        if isinstance(data.get("retry_of"), str):
            retried.add((name, data["retry_of"]))
        if data["status"] == status:
            found.append(Finished(str(path), data, settings.for_route(name), mine[name]))
    chosen = [f for f in reversed(found) if (f.settings.route.name, f.relative) not in retried]
    return chosen, len(found) - len(chosen)


def with_timeout(data: bytes, timeout: float, settings: Settings) -> bytes:
    """A job file's bytes with its `timeout` set to `timeout`: the file is written anew from
    its YAML mapping (its keys in their order; comments are not kept).

    Raises:
        JobError: the bytes are not a job file's YAML mapping.
    """
    document = read_document(data, job_limits(settings))
    value = float(timeout)
    document["timeout"] = int(value) if value.is_integer() else value
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.encode("utf-8")


def prepare(
    finished: Finished, *, job_timeout: float | None = None, completed: bool = False
) -> Submission:
    """The new submission of a finished result's archived job, checked, not yet dropped.

    Raises:
        NotRetried: why its job is not submitted again (`refusal`, its archived file gone or
            no longer valid, a subfolder the route no longer takes jobs from).
    """
    data, own = finished.data, finished.settings
    reason = refusal(data, completed=completed)
    if reason is not None:
        raise NotRetried(reason)
    if not valid_retry_of(finished.relative):
        raise NotRetried(f"its path {finished.relative!r} cannot be named in a retry tag")
    job, claim_id, subfolder = str(data["job"]), str(data["claim_id"]), data.get("subfolder", "")
    target = Target(own, subfolder)
    taker = inbox_route(own, target.inbox / job)
    if taker is None or taker.name != own.route.name:
        raise NotRetried(
            f"route {own.route.name} no longer takes jobs from {target.inbox} (its recursive "
            "and max_depth): the job would never run"
        )
    limits = job_limits(own)
    archived = find_archived(
        own.archive, subfolder, job, claim_id, data.get("submission"), limits.max_bytes
    )
    if archived is None:
        try:
            folder = archive_folder(own.archive, own.archive_layout, claim_id, subfolder)
        except ValueError:  # no date in the claim id: it could only be in the flat folder
            folder = archive_folder(own.archive, "flat", claim_id, subfolder)
        raise NotRetried(
            f"its job file is no longer in the archive (neither {folder / job} of this "
            f"submission nor {folder / unique_archive_name(job, claim_id)}): it was removed"
        )
    try:
        raw = read_job_bytes(archived, limits.max_bytes)
        if job_timeout is not None:
            raw = with_timeout(raw, job_timeout, own)
    except JobError as exc:
        raise NotRetried(f"its archived job file {archived}: {exc}") from None
    except OSError as exc:
        raise NotRetried(f"its archived job file {archived} cannot be read: {exc}") from None
    checked = check_bytes(target.inbox / job, retry_tagged(raw, finished.relative), own)
    if not checked.ok:
        raise NotRetried(f"its archived job file {archived} is not valid now: {checked.problem}")
    extra = {"retry_of": finished.relative, "archived": str(archived)}
    return Submission(finished.given, checked, target=target, extra=extra)


def retry(
    given: Sequence[str],
    settings: Settings,
    *,
    route: str | None,
    status: str | None,
    since: float | None,
    job_timeout: float | None,
    completed: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    live: bool,
) -> int:
    """Run `dropflow retry` (see the module's docstring); return the exit status: the worst of
    every result's (`dropflow submit`'s codes; 2 for a result given that is not retried)."""
    screen = Screen(out, live=live and not as_json, quiet=as_json)
    skipped: list[Submission] = []
    codes: dict[int, int] = {}

    def not_retried(name: str, why: str, code: int | None) -> None:
        print(one_line(f"dropflow: retry: {name}: {why}"), file=err)
        sub = Submission(name, Checked(Path(name), None, why))
        sub.extra = {"status": "not retried", "message": why}
        skipped.append(sub)
        if code is not None:
            codes[id(sub)] = code

    subs: list[Submission] = []
    if status is not None:
        assert since is not None
        chosen, already = select(settings, route, status, since)
        if already:
            screen.say(f"dropflow: retry: {already} {status} result(s) retried already: left out")
        for finished in chosen:
            try:
                subs.append(prepare(finished, job_timeout=job_timeout, completed=completed))
            except NotRetried as exc:
                # Chosen, not given: a result that cannot be retried is told, not a failure.
                not_retried(finished.given, str(exc), None)
    for name in given:
        try:
            finished = read_finished(name, settings, route)
            subs.append(prepare(finished, job_timeout=job_timeout, completed=completed))
        except NotRetried as exc:
            not_retried(name, str(exc), EXIT_CODES["invalid"])
    if status is not None and not subs:
        screen.say(f"dropflow: retry: no {status} result of that time left to retry")
    if subs:
        delivered = deliver(subs, screen, wait=wait, timeout=timeout)
        codes.update(delivered or {id(s): EXIT_NO_SERVICE for s in subs})
    return finish([*skipped, *subs], codes, as_json, out)

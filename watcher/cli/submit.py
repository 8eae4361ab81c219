"""`dropflow submit`: check job files, drop them into the inbox safely, and wait for their
results.

It works on one route's settings (`Settings.for_route`, chosen by `watcher.cli.routes`): the
files are checked with that route's defaults and flows, dropped into its inbox, and their
results looked for in its results folder.

- Every file is checked first with the service's rules (`watcher.cli.validate`); if any is
  invalid, its message is printed and nothing at all is dropped.
- A file is dropped the safe way: written and fsynced under a hidden temp name in the inbox,
  then renamed to its name in one step, never replacing a file there (a job of the same name
  still waiting would be lost). If the name is taken, it gets a unique one,
  `<stem>.<random><suffix>`, and the command says so.
- The bytes dropped carry a submission id (`watcher.jobs.submission`), which the service copies
  into the result: `--wait` waits for the result of *this* submission, never another job of
  the same name.

The drop and the wait (`deliver`) serve `dropflow retry` too, whose submissions each carry
their own route and subfolder (`Target`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from watcher.cli.routes import inbox_route
from watcher.cli.validate import Checked, check_file, shown
from watcher.config.settings import Settings
from watcher.folders.durable import fsync_dir, rename_exclusive, write_atomic
from watcher.folders.lock import is_held
from watcher.folders.results import read_result, result_names
from watcher.folders.retention import Waiter
from watcher.jobs.messages import one_line
from watcher.jobs.names import cut_stem
from watcher.jobs.submission import new_id, tagged

__all__ = [
    "EXIT_CODES",
    "EXIT_NO_SERVICE",
    "Screen",
    "Submission",
    "Target",
    "deliver",
    "finish",
    "submit",
]

logger = logging.getLogger(__name__)

EXIT_CODES = {"completed": 0, "canceled": 1, "error": 2, "invalid": 2, "timeout": 3}
EXIT_NO_SERVICE = 4
POLL_SECONDS = 0.1
"""How often a waiting `submit` looks at the inbox and the results folder."""
SWEEP_SECONDS = 2.0
"""How often a waiting `submit` looks through every new result, not only its file name's."""


@dataclass(frozen=True)
class Target:
    """Where a submission goes: a route's inbox (or a subfolder of it, for a recursive route),
    its results looked for in the same relative folder of the route's results."""

    settings: Settings
    """The route's settings (`Settings.for_route`)."""
    subfolder: str = ""

    @property
    def inbox(self) -> Path:
        """The folder the job file is dropped into."""
        inbox = self.settings.inbox
        return inbox / self.subfolder if self.subfolder else inbox

    @property
    def results(self) -> Path:
        """The folder its result is published in."""
        results = self.settings.results
        return results / self.subfolder if self.subfolder else results

    @property
    def where(self) -> str:
        """The inbox, for a message: with the route's name, for a config with routes."""
        route = self.settings.route.name
        return f"{self.settings.inbox} (route {route})" if self.settings.routes else str(self.inbox)


@dataclass
class Submission:
    """One file's way through `submit`."""

    given: str
    checked: Checked
    id: str = field(default_factory=new_id)
    target: Target | None = None
    """Where it goes (None only before `deliver` is given it)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More keys for its `--json` object (`dropflow retry`'s)."""
    dropped: Path | None = None
    inode: tuple[int, int] | None = None
    claimed_at: float | None = None
    since: float = field(default_factory=lambda: time.time() - 1)
    result: dict[str, Any] | None = None
    result_path: Path | None = None
    _not_mine: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The file as given on the command line, safe to print on one line."""
        return one_line(self.given)

    @property
    def status(self) -> str:
        """`invalid`, `not submitted`, `submitted`, or the result's status."""
        if not self.checked.ok:
            return "invalid"
        if self.result is not None:
            return str(self.result.get("status", "error"))
        return "submitted" if self.dropped is not None else "not submitted"

    def queued(self) -> bool:
        """Whether the dropped file is still in the inbox, not yet claimed by a service."""
        assert self.dropped is not None
        try:
            info = os.lstat(self.dropped)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self.inode

    def find_result(self, results: Path, everywhere: bool = False) -> bool:
        """Look for this submission's result among the results of its file name, or with
        `everywhere` among every result file newer than the submission.

        The result of a file is named after it; the wider look is for a job the service had
        to rename (a file put in its place by another writer while it was being claimed is
        given back to the inbox under a new name).
        """
        assert self.dropped is not None
        if everywhere:
            try:
                entries = list(os.scandir(results))
            except FileNotFoundError:
                return False
            for entry in entries:
                with contextlib.suppress(OSError):
                    newer = entry.stat(follow_symlinks=False).st_mtime >= self.since
                    if newer and not entry.name.startswith(".") and self._check(entry.path):
                        return True
            return False
        for name in result_names(self.dropped.name):
            try:
                if self._check(str(results / name)):
                    return True
            except FileNotFoundError:
                return False  # results take the first free name: none further on yet
        return False

    def _check(self, path: str) -> bool:
        info = os.lstat(path)
        signature = (info.st_ino, info.st_mtime_ns)
        if self._not_mine.get(path) == signature:
            return False
        data = read_result(Path(path))
        if data is not None and data.get("submission") == self.id:
            self.result, self.result_path = data, Path(path)
            return True
        self._not_mine[path] = signature
        return False

    def as_json(self, code: int | None) -> dict[str, Any]:
        """The object `submit --json` prints for this file."""
        return {
            "file": self.given,
            "submission": self.id if self.dropped else None,
            "dropped_as": str(self.dropped) if self.dropped else None,
            "status": self.status,
            "exit": code,
            "message": self.checked.message if not self.checked.ok else None,
            "result_path": str(self.result_path) if self.result_path else None,
            "result": self.result,
            **self.extra,
        }


def drop(inbox: Path, name: str, data: bytes, token: str) -> tuple[Path, tuple[int, int]]:
    """Write `data` into `inbox` as `name` atomically, never replacing a file there.

    Returns the path it got (`name`, or `<stem>.<token><suffix>` if `name` is taken) and the
    file's identity (device, inode), taken before the rename: a service may claim the file
    the moment it has its name.
    """
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = write_atomic(inbox, data)
    info = os.lstat(tmp)
    identity = (info.st_dev, info.st_ino)
    try:
        for candidate in (name, unique_name(name, token)):
            target = inbox / candidate
            try:
                rename_exclusive(tmp, target)
            except FileExistsError:
                continue
            except NotImplementedError:
                # No rename without replace here: only a name nobody else uses is safe.
                target = inbox / unique_name(name, token)
                os.rename(tmp, target)
            fsync_dir(inbox)
            return target, identity
        raise FileExistsError(f"{inbox}: both {name} and {unique_name(name, token)} are taken")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unique_name(name: str, token: str) -> str:
    """`<stem>.<token><suffix>`, the stem cut so the name still fits a file system."""
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix else name
    return f"{cut_stem(stem)}.{token}{suffix}"


class Screen:
    """Progress for people: one live line on a terminal, plain lines elsewhere."""

    def __init__(self, out: TextIO, live: bool, quiet: bool) -> None:
        self.out, self.live, self.quiet = out, live, quiet
        self._shown: dict[str, str] = {}
        self._line = False

    def say(self, text: str) -> None:
        """A line that stays."""
        if self.quiet:
            return
        self._clear()
        print(text, file=self.out, flush=True)

    def phase(self, key: str, text: str) -> None:
        """A line that stays when not live, printed once per phase."""
        if self.quiet or self.live or self._shown.get(key) == text:
            return
        self._shown[key] = text
        print(text, file=self.out, flush=True)

    def status(self, text: str) -> None:
        """The live line (on a terminal only): redrawn in place."""
        if self.quiet or not self.live:
            return
        width = max(20, shutil.get_terminal_size().columns - 1)
        if len(text) > width:
            text = text[: width - 3] + "..."
        self.out.write(f"\r\x1b[K{text}")
        self.out.flush()
        self._line = True

    def _clear(self) -> None:
        if self._line:
            self.out.write("\r\x1b[K")
            self._line = False


def _check(path: Path, settings: Settings) -> Checked:
    checked = check_file(path, settings)
    where = inbox_route(settings, path) if checked.ok else None
    if where is not None:
        # Dropping a copy would run the job twice: the file itself is already a job.
        inbox = "the inbox" if where == settings.route else f"route {where.name}'s inbox"
        return Checked(path, None, f"already in {inbox}: the service takes it as it is")
    return checked


def _done_line(sub: Submission) -> str:
    result = sub.result or {}
    took = result.get("duration_s")
    took_text = f" in {took:g} s" if isinstance(took, int | float) else ""
    line = f"{sub.label}: {result.get('status')}{took_text}: {result.get('message', '')}"
    details = [f"result: {sub.result_path}"]
    if result.get("flow_run_id"):
        details.append(f"flow run {result.get('flow_run_name')} ({result['flow_run_id']})")
    return one_line(line) + "\n  " + one_line(", ".join(details))


def _progress(sub: Submission, now: float, started: float, timeout: float | None) -> str:
    if sub.queued():
        text = f"{sub.label}: waiting for the service ({now - started:.1f} s)"
    else:
        assert sub.checked.job is not None
        claimed = sub.claimed_at or now
        text = f"{sub.label}: running {now - claimed:.1f} s / {sub.checked.job.timeout:g} s timeout"
    if timeout is not None:
        text += f", giving up in {max(0.0, started + timeout - now):.0f} s"
    return text


def submit(
    files: Sequence[str],
    settings: Settings,
    *,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    out: TextIO,
    live: bool,
) -> int:
    """Run `dropflow submit` (see the module's docstring); return the exit status."""
    target = Target(settings)
    subs = [Submission(given, _check(Path(given), settings), target=target) for given in files]
    screen = Screen(out, live=live and not as_json, quiet=as_json)
    if not all(sub.checked.ok for sub in subs):
        for sub in subs:
            if not sub.checked.ok:
                screen.say(shown(sub.checked, sub.given))
        screen.say("dropflow: nothing was submitted")
        return finish(subs, {id(s): EXIT_CODES["invalid"] for s in subs}, as_json, out)
    codes = deliver(subs, screen, wait=wait, timeout=timeout)
    if codes is None:
        return finish(subs, {id(s): EXIT_NO_SERVICE for s in subs}, as_json, out, EXIT_NO_SERVICE)
    return finish(subs, codes, as_json, out)


def deliver(
    subs: Sequence[Submission], screen: Screen, *, wait: bool, timeout: float | None
) -> dict[int, int] | None:
    """Drop each checked submission into its target's inbox and, with `wait`, wait for their
    results; the exit status of each (by `id`). With `wait` and a target no service serves,
    nothing is dropped: None (the caller's exit status is then `EXIT_NO_SERVICE`)."""
    # One look per route: a service holds a route's folders, subfolders and all.
    targets = {s.target.settings.inbox: s.target for s in subs if s.target is not None}
    idle = [t for t in targets.values() if not is_held(t.settings.inbox, t.settings.processing)]
    if wait and idle:
        for target in idle:
            screen.say(
                f"dropflow: no service is serving {target.where}; nothing was submitted "
                "(start one with `dropflow run`, or submit without --wait to queue the job)"
            )
        return None

    # Before the first drop: retention (`dropflow prune`, a service on any machine) keeps the
    # results a waiter looks for while its marker in the route's processing folder is fresh.
    waiters = _waiters(subs) if wait else []
    try:
        return _drop_and_wait(subs, screen, idle, waiters, wait=wait, timeout=timeout)
    finally:
        for waiter in waiters:
            waiter.remove()


def _waiters(subs: Sequence[Submission]) -> list[Waiter]:
    """One marker per route, naming the result stems of its submissions under either name
    they may be dropped as."""
    stems: dict[Path, list[str]] = {}
    for sub in subs:
        assert sub.target is not None
        name = sub.checked.path.name
        for dropped_as in (name, unique_name(name, sub.id[-12:])):
            result = next(result_names(dropped_as))
            stems.setdefault(sub.target.settings.processing, []).append(
                result.removesuffix(".result.yaml")
            )
    waiters = [Waiter(processing, names) for processing, names in stems.items()]
    for waiter in waiters:
        waiter.refresh()
    return waiters


def _drop_and_wait(
    subs: Sequence[Submission],
    screen: Screen,
    idle: list[Target],
    waiters: list[Waiter],
    *,
    wait: bool,
    timeout: float | None,
) -> dict[int, int]:
    for sub in subs:
        assert sub.target is not None
        data = tagged(sub.checked.data, sub.id)
        sub.dropped, sub.inode = drop(sub.target.inbox, sub.checked.path.name, data, sub.id[-12:])
        renamed = "" if sub.dropped.name == sub.checked.path.name else " (the name was taken)"
        screen.say(one_line(f"{sub.given}: submitted as {sub.dropped}{renamed}"))
    for target in idle:
        screen.say(
            f"dropflow: no service is serving {target.where} now: the job waits in the inbox "
            "until one starts"
        )
    if not wait:
        return {id(s): 0 for s in subs}

    codes: dict[int, int] = {}
    started = time.monotonic()
    next_sweep = started + SWEEP_SECONDS
    pending = list(subs)
    # Shown before the first look: a service may claim a file within milliseconds.
    for sub in pending:
        screen.phase(sub.id, f"{sub.label}: waiting for the service")
    giving_up = f", giving up in {timeout:.0f} s" if timeout is not None else ""
    screen.status(
        _live_line([f"{s.label}: waiting for the service (0.0 s){giving_up}" for s in pending])
    )
    while pending:
        now = time.monotonic()
        sweep = now >= next_sweep
        if sweep:
            next_sweep = now + SWEEP_SECONDS
        for sub in list(pending):
            assert sub.target is not None
            results = sub.target.results
            if sub.find_result(results) or (sweep and sub.find_result(results, True)):
                pending.remove(sub)
                codes[id(sub)] = EXIT_CODES.get(sub.status, EXIT_CODES["error"])
                screen.say(_done_line(sub))
            elif not sub.queued() and sub.claimed_at is None:
                sub.claimed_at = now
        if not pending:
            break
        if timeout is not None and now - started >= timeout:
            for sub in pending:
                codes[id(sub)] = EXIT_CODES["timeout"]
                screen.say(
                    one_line(
                        f"{sub.label}: no result after {timeout:g} s (--timeout); the job goes "
                        f"on: its result will carry submission {sub.id}"
                    )
                )
            break
        for waiter in waiters:
            waiter.refresh()
        lines = [_progress(sub, now, started, timeout) for sub in pending]
        for sub in pending:
            screen.phase(sub.id, _phase(sub))
        screen.status(_live_line(lines))
        time.sleep(POLL_SECONDS)
    return codes


def _live_line(lines: list[str]) -> str:
    return lines[0] if len(lines) == 1 else f"{len(lines)} jobs: " + "; ".join(lines)


def _phase(sub: Submission) -> str:
    """The plain-output wording of a pending submission's phase (printed once each)."""
    if sub.queued():
        return f"{sub.label}: waiting for the service"
    assert sub.checked.job is not None
    return f"{sub.label}: running (timeout {sub.checked.job.timeout:g} s)"


def finish(
    subs: Sequence[Submission],
    codes: dict[int, int],
    as_json: bool,
    out: TextIO,
    default: int = 0,
) -> int:
    if as_json:
        print(json.dumps([s.as_json(codes.get(id(s))) for s in subs], indent=2), file=out)
    return max((codes.get(id(s), default) for s in subs), default=default)

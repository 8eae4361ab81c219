"""`dropflow validate`: the service's own checks on job files, before they are dropped.

A file is checked exactly as the service would check it in the inbox (`read_job_bytes` with
the config's size cap, then `parse_job` with its caps and defaults, then, for a flow other
than wait, its parameters against the flow's schema: that loads the registry, which imports
Prefect and the flows), and a problem is told in
the words of the result file it would get: `<file name>: <problem>`. `dropflow submit` runs
the same checks first.

With several routes, `validate --route NAME` checks every file as that route's job (its
defaults and flows); without it, a file in a route's inbox is checked as that route's job and
any other file with the top-level settings (every registered flow, the top-level defaults).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from watcher.cli.routes import inbox_route
from watcher.config.registry import Registry, RegistryError
from watcher.config.settings import Settings
from watcher.defaults import WAIT_FLOW
from watcher.jobs.messages import one_line
from watcher.jobs.model import Job, JobError, JobLimits
from watcher.jobs.names import is_job_name
from watcher.jobs.reading import parse_job, read_job_bytes

__all__ = ["Checked", "check_bytes", "check_file", "job_limits", "one_line", "validate"]

logger = logging.getLogger(__name__)

EXIT_VALID = 0
EXIT_INVALID = 2


@dataclass(frozen=True)
class Checked:
    """What the checks made of one file."""

    path: Path
    job: Job | None
    problem: str = ""
    """Empty for a valid job; otherwise what follows `<name>: ` in its result message."""
    data: bytes = b""
    """The bytes that were checked (what `submit` drops)."""

    @property
    def ok(self) -> bool:
        """Whether the file is a valid job."""
        return self.job is not None

    @property
    def message(self) -> str:
        """The message the file's result would carry, as in a result file."""
        return f"{self.path.name}: {self.problem}"


def check_file(path: Path, settings: Settings) -> Checked:
    """Check one job file with the service's rules (see the module's docstring)."""
    if not os.path.lexists(path):
        return Checked(path, None, "no such file")
    if not is_job_name(path.name, settings.patterns):
        return Checked(path, None, name_problem(settings))
    try:
        data = read_job_bytes(path, job_limits(settings).max_bytes)
    except JobError as exc:
        return Checked(path, None, str(exc))
    except OSError as exc:
        return Checked(path, None, f"could not be read: {exc.strerror or exc}")
    return check_bytes(path, data, settings)


def name_problem(settings: Settings) -> str:
    """What is wrong with a file name that is no job file name (`is_job_name`)."""
    patterns = ", ".join(settings.patterns)
    return (
        f"not a job file name: the inbox takes {patterns} (never dotfiles or editor temp "
        "files), so the service would never see it"
    )


def check_bytes(path: Path, data: bytes, settings: Settings) -> Checked:
    """Check a job file's bytes, read already, as `check_file` does (`path`: the file they
    would be, which names them in a message)."""
    if not is_job_name(path.name, settings.patterns):
        return Checked(path, None, name_problem(settings), data=data)
    try:
        job = parse_job(data, job_limits(settings))
        if job.flow != WAIT_FLOW:
            loaded_registry(settings).parameters(job)
    except JobError as exc:
        return Checked(path, None, str(exc), data=data)
    except RegistryError as exc:
        return Checked(path, None, f"flow '{job.flow}' cannot be checked: {exc}", data=data)
    return Checked(path, job, data=data)


def job_limits(settings: Settings) -> JobLimits:
    """The caps and defaults of the settings' route, or for settings of several routes with
    none chosen, the top-level ones: every registered flow, the top-level defaults."""
    return settings.job_limits if one_route(settings) else settings.top_level_limits


def one_route(settings: Settings) -> bool:
    """Whether the settings are one route's (the config's only route, or one chosen)."""
    try:
        return settings.route is not None
    except ValueError:
        return False


def loaded_registry(settings: Settings) -> Registry:
    """The config's registry, loaded (which imports Prefect and every flow) once per process.

    Raises:
        RegistryError: a flow cannot be loaded.
    """
    key = (tuple(settings.flows.items()), settings.files_dir)
    registry = _registries.get(key)
    if registry is None:
        registry = settings.registry()
        registry.load()
        _registries[key] = registry
    return registry


_registries: dict[tuple[tuple[tuple[str, str], ...], Path], Registry] = {}


def describe(job: Job) -> str:
    """A job's values in a few words: `timeout 2 s, sleep [0, 3] s, name 'x'`, or for other
    flows `flow csv_summary, timeout 30 s, parameters path, columns`."""
    if job.flow != WAIT_FLOW:
        given = ", ".join(job.parameters or {}) or "none"
        name = f", name {job.name!r}" if job.name else ""
        return f"flow {job.flow}, timeout {job.timeout:g} s, parameters {given}{name}"
    sleep = job.sleep
    drawn = f"[{sleep[0]:g}, {sleep[1]:g}]" if isinstance(sleep, tuple) else f"{sleep:g}"
    name = f", name {job.name!r}" if job.name else ""
    return f"timeout {job.timeout:g} s, sleep {drawn} s{name}"


def shown(checked: Checked, given: str, route: str | None = None) -> str:
    """The line `validate` prints for a file given as `given` on the command line; `route`:
    the route it was checked for, to name (with several routes)."""
    if checked.ok:
        assert checked.job is not None
        where = f"route {route}: " if route else ""
        return one_line(f"{given}: valid ({where}{describe(checked.job)})")
    return one_line(f"{given}: {checked.problem}" + (f" (route {route})" if route else ""))


def validate(files: Sequence[str], settings: Settings, out: TextIO) -> int:
    """Check each file and print one line for it; 0 if all are valid, 2 otherwise.

    Settings of several routes with none chosen check each file as the job of the route whose
    inbox holds it (the line says which), or else with the top-level settings (a note on
    stderr says so once).
    """
    status = EXIT_VALID
    several = not one_route(settings)
    elsewhere = 0
    for given in files:
        path = Path(given)
        route = inbox_route(settings, path) if several else None
        checked = check_file(path, settings.for_route(route.name) if route else settings)
        if route is None and several:
            elsewhere += 1
        print(shown(checked, given, route.name if route else None), file=out)
        if not checked.ok:
            status = EXIT_INVALID
    if elsewhere:
        print(
            f"dropflow: validate: {elsewhere} of the files are in no route's inbox: checked with "
            "the top-level settings (every registered flow, the top-level defaults); "
            "--route NAME checks them as that route's jobs",
            file=sys.stderr,
        )
    return status

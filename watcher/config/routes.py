"""Routes: the watched folders of one service, each with its own folders, flow, defaults,
subfolders, order, priority and cap.

A config without `routes` has one route, `default`, made of the top-level `inbox`, `results`,
`archive` and `processing`: every config written before routes existed serves the same
folders as before. With `routes`, each route's folders default to `<results>/<name>`,
`<archive>/<name>` and `<processing>/<name>`, and a top-level `inbox` is an error.

`RouteConfig` is what a config file says about a route; `Route` is the route resolved against
the rest of the config (its defaults filled in); `overlap` says why two routes' folders cannot
be served together, from their paths (the service checks the folders themselves too, where a
bind mount or a symbolic link hides an overlap: `watcher.service.guard`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from watcher import defaults as builtin
from watcher.jobs.messages import show

__all__ = [
    "DEFAULT_ROUTE",
    "ROUTE_NAME",
    "Order",
    "Route",
    "RouteConfig",
    "RouteDefaults",
    "deployment_problem",
    "folder_overlap",
    "work_queue_problem",
]

DEFAULT_ROUTE = "default"
"""The name of the one route a config without `routes` has."""
ROUTE_NAME = re.compile(r"^[a-z0-9_-]{1,40}$")
# Prefect refuses these in the names of its objects (`prefect.types.BANNED_CHARACTERS`).
_NOT_IN_NAMES = ("/", "%", "&", ">", "<")
Order = Literal["oldest", "newest", "name"]


class RouteDefaults(BaseModel):
    """A route's `defaults`, merged over the top-level ones (each key given wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False)
    sleep: StrictFloat | tuple[StrictFloat, StrictFloat] | None = None
    parameters: dict[str, Any] | None = None


class RouteConfig(BaseModel):
    """One entry of `routes:` as written; see docs/routes.md for each key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox: Path
    results: Path | None = None
    archive: Path | None = None
    processing: Path | None = None
    archive_layout: builtin.ArchiveLayout | None = None
    flow: str | None = None
    flows: tuple[str, ...] | None = None
    defaults: RouteDefaults = RouteDefaults(timeout=None, sleep=None, parameters=None)
    recursive: StrictBool = False
    max_depth: StrictInt = Field(builtin.MAX_DEPTH, ge=1, le=64)
    order: Order = builtin.ROUTE_ORDER
    priority: StrictInt = Field(0, ge=-1000, le=1000)
    max_concurrent_jobs: StrictInt | None = Field(None, ge=1, le=1000)
    deployment: str | None = Field(None, min_length=1, max_length=200)
    work_queue: str | None = Field(None, min_length=1, max_length=200)
    results_days: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    archive_days: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)


KNOWN_KEYS = tuple(RouteConfig.model_fields) + tuple(RouteDefaults.model_fields)


@dataclass(frozen=True)
class Route:
    """A route resolved against its config: every value in force."""

    name: str
    inbox: Path
    results: Path
    archive: Path
    processing: Path
    archive_layout: builtin.ArchiveLayout = builtin.ARCHIVE_LAYOUT
    flow: str = builtin.WAIT_FLOW
    """The flow of jobs that name none."""
    flows: tuple[str, ...] = (builtin.WAIT_FLOW,)
    """The flows this route's jobs may name."""
    timeout: float = builtin.JOB_TIMEOUT
    sleep: float | tuple[float, float] = builtin.JOB_SLEEP
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Default parameters of the jobs that run `flow`."""
    recursive: bool = False
    max_depth: int = builtin.MAX_DEPTH
    order: Order = builtin.ROUTE_ORDER
    priority: int = 0
    max_concurrent_jobs: int | None = None
    deployment: str | None = None
    work_queue: str | None = None
    results_days: float = builtin.RESULTS_DAYS
    """Days a result is kept (0: for ever): the route's own, else the top-level key."""
    archive_days: float = builtin.ARCHIVE_DAYS
    """Days an archived job file is kept (0: for ever): the route's own, else the top-level key."""

    def folders(self) -> dict[str, Path]:
        """The route's four folders by key."""
        return {
            "inbox": self.inbox,
            "results": self.results,
            "archive": self.archive,
            "processing": self.processing,
        }


def deployment_problem(value: str) -> str | None:
    """What is wrong with a `deployment` value (top-level or a route's), or None: it must be
    `wait/<name>`, the wait flow's deployment, which names the set `<flow>/<name>`."""
    flow, _, name = value.partition("/")
    if flow != builtin.WAIT_FLOW or not name.strip() or "/" in name:
        return (
            f"must be 'wait/<deployment name>' (a deployment of the wait flow), got {show(value)}"
        )
    return None


def work_queue_problem(value: str) -> str | None:
    """What is wrong with a route's `work_queue`, or None."""
    if not value.strip() or any(c in value for c in _NOT_IN_NAMES):
        return (
            "must be a work queue name, without "
            f"{', '.join(repr(c) for c in _NOT_IN_NAMES[:-1])} or {_NOT_IN_NAMES[-1]!r}, "
            f"got {show(value)}"
        )
    return None


def inside(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or inside it, by path (both resolved)."""
    return inner == outer or outer in inner.parents


def folder_overlap(routes: Iterable[Route]) -> str | None:
    """Why these routes cannot be served together, from their paths alone, or None.

    Refused: two routes with the same inbox; an inbox inside another route's recursive inbox;
    any inbox inside any route's results, archive or processing folder, or one of those inside
    an inbox (its files would be taken for jobs, or claims would be moved into a watched tree).
    """
    listed = [(route, {key: p.resolve() for key, p in route.folders().items()}) for route in routes]
    for a, fa in listed:
        for b, fb in listed:
            if a is b:
                continue
            if fa["inbox"] == fb["inbox"]:
                if a.name < b.name:
                    return (
                        f"routes: {a.name} and {b.name} have the same inbox ({a.inbox}): "
                        "one folder is served by one route"
                    )
                continue
            if b.recursive and inside(fa["inbox"], fb["inbox"]):
                return (
                    f"routes: {a.name}'s inbox ({a.inbox}) is inside {b.name}'s inbox "
                    f"({b.inbox}), which is recursive: its files would be {b.name}'s jobs too"
                )
    for a, fa in listed:
        for b, fb in listed:
            for key in ("results", "archive", "processing"):
                where = f"{b.name}'s {key}"
                if inside(fa["inbox"], fb[key]) or inside(fb[key], fa["inbox"]):
                    inner, outer = (
                        ((f"{a.name}'s inbox", a.inbox), (where, fb[key]))
                        if inside(fa["inbox"], fb[key])
                        else ((where, fb[key]), (f"{a.name}'s inbox", a.inbox))
                    )
                    relation = "is" if fa["inbox"] == fb[key] else "is inside"
                    return (
                        f"routes: {inner[0]} ({inner[1]}) {relation} {outer[0]} ({outer[1]}): "
                        "an inbox must be apart from every results, archive and processing folder"
                    )
    return None

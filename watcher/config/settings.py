"""The service's settings: one frozen model, loaded and checked once from `config.yaml`."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from watcher import defaults as builtin
from watcher.config.registry import Registry, split_entrypoint
from watcher.config.routes import (
    DEFAULT_ROUTE,
    ROUTE_NAME,
    Route,
    RouteConfig,
    deployment_problem,
    folder_overlap,
    inside,
    work_queue_problem,
)
from watcher.config.routes import KNOWN_KEYS as ROUTE_KEYS
from watcher.jobs.messages import did_you_mean, humanize, show
from watcher.jobs.model import FLOW_NAME, JobError, JobLimits
from watcher.jobs.reading import DuplicateKeyError, UniqueKeyLoader, parse_job

__all__ = [
    "ConfigError",
    "JobDefaults",
    "Settings",
    "load_config",
    "retention_floor",
    "retention_problem",
]


class ConfigError(Exception):
    """The config file cannot be used; the message names the file, the key and the problem."""


class JobDefaults(BaseModel):
    """Values used for keys a job file leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: StrictFloat = Field(builtin.JOB_TIMEOUT, gt=0, allow_inf_nan=False)
    sleep: StrictFloat | tuple[StrictFloat, StrictFloat] = builtin.JOB_SLEEP
    parameters: dict[str, Any] | None = None
    """Default parameters of jobs that run their route's `flow` (not wait, which takes none)."""


class Settings(BaseModel):
    """Everything `dropflow run` needs; `watcher.defaults` says what each key means.

    Numbers and booleans are strict, as a job file's are: `true` is not 1, and neither 1 nor
    "yes" is true (YAML's own `yes` is).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox: Path = Path(builtin.INBOX)
    results: Path = Path(builtin.RESULTS)
    archive: Path = Path(builtin.ARCHIVE)
    archive_layout: builtin.ArchiveLayout = builtin.ARCHIVE_LAYOUT
    processing: Path = Path(builtin.PROCESSING)
    max_concurrent_jobs: StrictInt = Field(builtin.MAX_CONCURRENT_JOBS, ge=1, le=1000)
    defaults: JobDefaults = JobDefaults(timeout=builtin.JOB_TIMEOUT, sleep=builtin.JOB_SLEEP)
    patterns: tuple[str, ...] = Field(builtin.PATTERNS, min_length=1)
    polling: StrictBool = builtin.POLLING
    settle_seconds: StrictFloat = Field(builtin.SETTLE_SECONDS, ge=0, le=3600, allow_inf_nan=False)
    rescan_interval: StrictFloat = Field(
        builtin.RESCAN_INTERVAL, gt=0, le=86400, allow_inf_nan=False
    )
    shutdown_grace: StrictFloat = Field(builtin.SHUTDOWN_GRACE, ge=0, le=86400, allow_inf_nan=False)
    max_attempts: StrictInt = Field(builtin.MAX_ATTEMPTS, ge=1, le=100)
    max_timeout: StrictFloat = Field(builtin.MAX_TIMEOUT, gt=0, allow_inf_nan=False)
    max_sleep: StrictFloat = Field(builtin.MAX_SLEEP, ge=0, allow_inf_nan=False)
    max_job_bytes: StrictInt = Field(builtin.MAX_JOB_BYTES, ge=64, le=16 * 1024 * 1024)
    flows: dict[str, str] = Field(default_factory=lambda: dict(builtin.FLOWS), min_length=1)
    files_dir: Path = Path(builtin.FILES_DIR)
    max_return_bytes: StrictInt = Field(builtin.MAX_RETURN_BYTES, ge=0, le=16 * 1024 * 1024)
    runner: Literal["prefect", "deployment", "direct"] = builtin.RUNNER
    work_pool: str = Field(builtin.WORK_POOL, min_length=1, max_length=200)
    deployment: str = builtin.DEPLOYMENT
    start_timeout: StrictFloat | None = Field(builtin.START_TIMEOUT, gt=0, allow_inf_nan=False)
    lost_run_margin: StrictFloat = Field(
        builtin.LOST_RUN_MARGIN, gt=0, le=86400, allow_inf_nan=False
    )
    data_dir: Path = Path(builtin.DATA_DIR)
    server_port: StrictInt = Field(builtin.SERVER_PORT, ge=1, le=65535)
    ui: StrictBool = builtin.UI
    events: StrictBool = builtin.EVENTS
    # Prefect's retention cannot go below one hour.
    history_days: StrictFloat = Field(builtin.HISTORY_DAYS, allow_inf_nan=False)
    results_days: StrictFloat = Field(builtin.RESULTS_DAYS, ge=0, allow_inf_nan=False)
    archive_days: StrictFloat = Field(builtin.ARCHIVE_DAYS, ge=0, allow_inf_nan=False)
    metrics_port: StrictInt | None = Field(builtin.METRICS_PORT, ge=1, le=65535)
    metrics_host: str = Field(builtin.METRICS_HOST, min_length=1, max_length=253)
    routes: dict[str, RouteConfig] | None = None
    """The watched folders, by name; None: one route, `default`, of the top-level folders."""
    _routes: dict[str, Route] = PrivateAttr(default_factory=dict)
    _route: str | None = PrivateAttr(default=None)

    @field_validator("routes", mode="before")
    @classmethod
    def _check_route_names(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, dict) or not value:
            raise PydanticCustomError(
                "dropflow",
                "routes: must be a mapping of route names to routes (at least one), got "
                f"{show(value)}",
            )
        for name in value:
            if not isinstance(name, str) or not ROUTE_NAME.match(name):
                raise PydanticCustomError(
                    "dropflow",
                    f"routes: {show(name)} is not a route name ('a'-'z', '0'-'9', '_' or '-', "
                    "at most 40)",
                )
        return value

    @field_validator("metrics_host")
    @classmethod
    def _a_host(cls, value: str) -> str:
        if not value.strip() or any(char.isspace() for char in value):
            raise ValueError(
                "must be an address or host name to listen on (127.0.0.1, 0.0.0.0, ::1, "
                f"localhost), got {show(value)}"
            )
        return value

    @field_validator("history_days")
    @classmethod
    def _history_days(cls, value: float) -> float:
        if value != 0 and value < 1 / 24:
            raise ValueError("must be 0 (keep for ever) or at least 1/24 (one hour)")
        return value

    @field_validator("results_days", "archive_days")
    @classmethod
    def _retention_days(cls, value: float) -> float:
        problem = retention_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("patterns", mode="before")
    @classmethod
    def _one_pattern_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("flows", mode="before")
    @classmethod
    def _check_flows(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise PydanticCustomError(
                "dropflow",
                f"flows: must be a mapping of flow names to entrypoints, got {show(value)}",
            )
        for name, entrypoint in value.items():
            if not isinstance(name, str) or not FLOW_NAME.match(name):
                raise PydanticCustomError(
                    "dropflow",
                    f"flows: {show(name)} is not a flow name (a letter, then letters, digits, "
                    "'_' or '-', at most 64)",
                )
            if not isinstance(entrypoint, str) or not _ENTRYPOINT.match(entrypoint.strip()):
                raise PydanticCustomError(
                    "dropflow",
                    f"flows: {name}: must be an entrypoint 'module.path:function' or "
                    f"'path/to/file.py:function', got {show(entrypoint)}",
                )
            wait_entrypoint = builtin.FLOWS[builtin.WAIT_FLOW]
            if name == builtin.WAIT_FLOW and entrypoint.strip() != wait_entrypoint:
                raise PydanticCustomError(
                    "dropflow",
                    f"flows: wait: the name 'wait' is the built-in wait flow "
                    f"({wait_entrypoint}); register your flow under another name",
                )
        return value

    @field_validator("deployment")
    @classmethod
    def _a_wait_deployment(cls, value: str) -> str:
        problem = deployment_problem(value)
        if problem is not None:
            raise _problem(f"deployment: {problem}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        folders = {
            "inbox": self.inbox,
            "results": self.results,
            "archive": self.archive,
            "processing": self.processing,
            "data_dir": self.data_dir,
        }
        seen: dict[Path, str] = {}
        for key, folder in folders.items():
            resolved = folder.resolve()
            if resolved in seen and self.routes is None:
                raise ValueError(f"{key}: must differ from {seen[resolved]}, both are {folder}")
            seen[resolved] = key
        self._routes = self._resolve_routes()
        if self.routes is not None:
            overlap = folder_overlap(self._routes.values())
            if overlap is not None:
                raise _problem(overlap)
            data = self.data_dir.resolve()
            for route in self._routes.values():
                for key, folder in route.folders().items():
                    there = folder.resolve()
                    if inside(there, data) or inside(data, there):
                        raise _problem(
                            f"data_dir ({self.data_dir}) and routes: {route.name}'s {key} "
                            f"({folder}) must be apart, neither inside the other"
                        )
        for route in self._routes.values():
            where = f"routes: {route.name}: " if self.routes is not None else ""
            try:
                parse_job(b"{}", self.for_route(route.name).job_limits)
            except JobError as exc:
                raise _problem(f"{where}defaults: {exc}") from None
        return self

    def _resolve_routes(self) -> dict[str, Route]:
        top = self.defaults
        if self.routes is None:
            if top.parameters is not None:
                raise _problem(
                    "defaults: parameters: only routes that name a flow (routes: <name>: "
                    "flow: ...) have default parameters; the wait flow takes none"
                )
            return {
                DEFAULT_ROUTE: Route(
                    name=DEFAULT_ROUTE,
                    inbox=self.inbox,
                    results=self.results,
                    archive=self.archive,
                    processing=self.processing,
                    archive_layout=self.archive_layout,
                    flows=tuple(self.flows),
                    timeout=top.timeout,
                    sleep=top.sleep,
                    results_days=self.results_days,
                    archive_days=self.archive_days,
                )
            }
        resolved = {}
        for name, given in self.routes.items():
            flows = given.flows if given.flows is not None else tuple(self.flows)
            # The flows it names (a flow it leaves to its default is checked below).
            for flow in (*flows, *([given.flow] if given.flow else [])):
                if flow not in self.flows:
                    registered = ", ".join(self.flows)
                    raise _problem(
                        f"routes: {name}: no flow named {show(flow)} is registered"
                        f"{did_you_mean(flow, self.flows)}; registered (config flows): "
                        f"{registered}"
                    )
            # No flow named: wait, or the route's only flow.
            flow = given.flow or (flows[0] if len(flows) == 1 else builtin.WAIT_FLOW)
            if flow not in flows:
                raise _problem(
                    f"routes: {name}: flow: {flow} is not among the route's flows "
                    f"({', '.join(flows)})"
                )
            mine = given.defaults
            parameters = {**(top.parameters or {}), **(mine.parameters or {})}
            if parameters and flow == builtin.WAIT_FLOW:
                raise _problem(
                    f"routes: {name}: defaults: parameters: the route's flow is wait, which "
                    "takes none (its keys are timeout and sleep)"
                )
            for key, problem in (
                ("deployment", given.deployment and deployment_problem(given.deployment)),
                ("work_queue", given.work_queue and work_queue_problem(given.work_queue)),
            ):
                if problem:
                    raise _problem(f"routes: {name}: {key}: {problem}")
            for key in ("results_days", "archive_days"):
                days = getattr(given, key)
                problem = retention_problem(days) if days is not None else None
                if problem is not None:
                    raise _problem(f"routes: {name}: {key}: {problem}")
            resolved[name] = Route(
                name=name,
                inbox=given.inbox,
                results=given.results or self.results / name,
                archive=given.archive or self.archive / name,
                processing=given.processing or self.processing / name,
                archive_layout=given.archive_layout or self.archive_layout,
                flow=flow,
                flows=tuple(flows),
                timeout=mine.timeout if mine.timeout is not None else top.timeout,
                sleep=mine.sleep if mine.sleep is not None else top.sleep,
                parameters=parameters,
                recursive=given.recursive,
                max_depth=given.max_depth,
                order=given.order,
                priority=given.priority,
                max_concurrent_jobs=given.max_concurrent_jobs,
                deployment=given.deployment,
                work_queue=given.work_queue,
                results_days=_given_or(given.results_days, self.results_days),
                archive_days=_given_or(given.archive_days, self.archive_days),
            )
        return resolved

    @property
    def served(self) -> dict[str, Route]:
        """Every route of this config, by name (`default` alone without `routes`)."""
        return dict(self._routes)

    @property
    def route(self) -> Route:
        """This settings' route: the one `for_route` made them for, or the only one."""
        if self._route is not None:
            return self._routes[self._route]
        if len(self._routes) != 1:
            raise ValueError("settings of several routes have no one route: use for_route")
        return next(iter(self._routes.values()))

    def for_route(self, name: str) -> Settings:
        """These settings as one route sees them: its folders at the top level, its flows and
        its defaults, so code written for one inbox serves a route unchanged."""
        route = self._routes[name]
        copy = self.model_copy(
            update={
                "inbox": route.inbox,
                "results": route.results,
                "archive": route.archive,
                "processing": route.processing,
                "archive_layout": route.archive_layout,
                "defaults": JobDefaults(timeout=route.timeout, sleep=route.sleep),
            }
        )
        copy._route = name
        return copy

    def registry(self) -> Registry:
        """The registry of this config's flows, not loaded yet (`Registry.load` imports them)."""
        return Registry(self.flows, self.files_dir)

    @property
    def job_limits(self) -> JobLimits:
        """The caps and defaults job files are checked against: this settings' route's."""
        if not self._routes:  # while validating, before the routes are resolved
            return self.top_level_limits
        route = self.route
        return replace(
            self.top_level_limits,
            flows=route.flows,
            default_flow=route.flow,
            default_parameters=dict(route.parameters),
        )

    @property
    def top_level_limits(self) -> JobLimits:
        """The caps and the top-level defaults, with every registered flow and wait by
        default: a job file of no route in particular."""
        return JobLimits(
            max_timeout=self.max_timeout,
            max_sleep=self.max_sleep,
            max_bytes=self.max_job_bytes,
            default_timeout=self.defaults.timeout,
            default_sleep=self.defaults.sleep,
            flows=tuple(self.flows),
        )


def _given_or(given: float | None, default: float) -> float:
    return default if given is None else given


def retention_floor() -> float:
    """The shortest retention allowed, in seconds: `RETENTION_FLOOR_SECONDS`, or the value of
    the environment variable `RETENTION_FLOOR_ENV` (for soaks and tests; a documented
    fallback, as watchfiles' `WATCHFILES_FORCE_POLLING` is)."""
    given = os.environ.get(builtin.RETENTION_FLOOR_ENV, "").strip()
    if not given:
        return builtin.RETENTION_FLOOR_SECONDS
    try:
        floor = float(given)
    except ValueError:
        floor = 0.0
    if not 0 < floor < float("inf"):
        raise ValueError(
            f"the environment variable {builtin.RETENTION_FLOOR_ENV} must be a number of "
            f"seconds > 0, got {show(given)}"
        )
    return floor


def retention_problem(days: float) -> str | None:
    """What is wrong with a `results_days` / `archive_days` value, or None."""
    floor = retention_floor()
    if days == 0 or days * 86400 >= floor:
        return None
    if floor == builtin.RETENTION_FLOOR_SECONDS:
        return "must be 0 (keep for ever) or at least 1/24 (one hour)"
    return (
        f"must be 0 (keep for ever) or at least {floor:g} seconds "
        f"({floor / 86400:.6g} days, {builtin.RETENTION_FLOOR_ENV})"
    )


def _problem(message: str) -> PydanticCustomError:
    """A problem whose message names its key itself (shown as it is)."""
    return PydanticCustomError("dropflow", message)


KNOWN_KEYS = tuple(Settings.model_fields) + tuple(JobDefaults.model_fields)
_NESTED_KEYS = {"routes": ROUTE_KEYS}
_PATH_KEYS = ("inbox", "results", "archive", "processing", "data_dir", "files_dir")
# `module.path:function` or `some/file.py:function` (a Windows drive letter is allowed).
_ENTRYPOINT = re.compile(
    r"^(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*|(?:[A-Za-z]:)?[^:]+\.py):[A-Za-z_][\w]*$"
)


def load_config(path: Path | None) -> Settings:
    """Load and check the config file; relative folders resolve against its folder.

    `None` means no file: every key takes its default, relative to the working directory.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or a key is wrong.
    """
    if path is None:
        return _validate({}, Path.cwd(), "(built-in defaults)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        # A safe loader (`yaml.safe_load`'s), which also refuses a key given twice.
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2001-13-45
        raise ConfigError(f"{path}: a value that cannot be read: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of keys to values, got {show(data)}")
    return _validate(data, path.resolve().parent, str(path))


def _validate(data: dict[str, Any], base: Path, source: str) -> Settings:
    data = dict(data)
    routes = data.get("routes")
    if routes is not None and "inbox" in data:
        raise ConfigError(
            f"{source}: inbox: with routes, each route names its own inbox "
            "(routes: <name>: inbox: ...); remove the top-level inbox, or make it a route"
        )
    if isinstance(routes, dict):
        data["routes"] = {
            name: _resolve_route_paths(route, base) if isinstance(route, dict) else route
            for name, route in routes.items()
        }
    for key in _PATH_KEYS:
        value = data.get(key, getattr(builtin, key.upper()))
        if isinstance(value, str) and value.strip():
            data[key] = base / Path(value).expanduser()
        elif key in data:
            raise ConfigError(f"{source}: {key}: must be a folder path, got {show(value)}")
    flows = data.get("flows")
    if isinstance(flows, dict):
        data["flows"] = {
            name: _resolve_entrypoint(entrypoint, base) for name, entrypoint in flows.items()
        }
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = humanize(exc, KNOWN_KEYS, _NESTED_KEYS)
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _resolve_route_paths(route: dict[str, Any], base: Path) -> dict[str, Any]:
    """A route's folders relative to the config's folder (the model names a wrong value)."""
    route = dict(route)
    for key in ("inbox", "results", "archive", "processing"):
        value = route.get(key)
        if isinstance(value, str) and value.strip():
            route[key] = base / Path(value).expanduser()
    return route


def _resolve_entrypoint(entrypoint: Any, base: Path) -> Any:
    """A file entrypoint (`path/to/file.py:function`) relative to the config's folder."""
    if not isinstance(entrypoint, str) or not _ENTRYPOINT.match(entrypoint.strip()):
        return entrypoint  # the model's check names the key
    path, function, by_file = split_entrypoint(entrypoint.strip())
    if not by_file:
        return entrypoint.strip()
    return f"{base / Path(path).expanduser()}:{function}"

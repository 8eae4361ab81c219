"""The service's settings: one frozen model, loaded and checked once from `config.yaml`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
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
from watcher.jobs.messages import humanize, show
from watcher.jobs.model import FLOW_NAME, JobError, JobLimits
from watcher.jobs.reading import DuplicateKeyError, UniqueKeyLoader, parse_job

__all__ = ["ConfigError", "JobDefaults", "Settings", "load_config"]


class ConfigError(Exception):
    """The config file cannot be used; the message names the file, the key and the problem."""


class JobDefaults(BaseModel):
    """Values used for keys a job file leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: StrictFloat = Field(builtin.JOB_TIMEOUT, gt=0, allow_inf_nan=False)
    sleep: StrictFloat | tuple[StrictFloat, StrictFloat] = builtin.JOB_SLEEP


class Settings(BaseModel):
    """Everything `dropflow run` needs; `watcher.defaults` says what each key means.

    Numbers and booleans are strict, as a job file's are: `true` is not 1, and neither 1 nor
    "yes" is true (YAML's own `yes` is).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox: Path = Path(builtin.INBOX)
    results: Path = Path(builtin.RESULTS)
    archive: Path = Path(builtin.ARCHIVE)
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
    # Prefect's retention cannot go below one hour.
    history_days: StrictFloat = Field(builtin.HISTORY_DAYS, allow_inf_nan=False)

    @field_validator("history_days")
    @classmethod
    def _history_days(cls, value: float) -> float:
        if value != 0 and value < 1 / 24:
            raise ValueError("must be 0 (keep for ever) or at least 1/24 (one hour)")
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
        flow, _, name = value.partition("/")
        if flow != "wait" or not name.strip() or "/" in name:
            raise PydanticCustomError(
                "dropflow",
                "deployment: must be 'wait/<deployment name>' (a deployment of the wait flow), "
                f"got {show(value)}",
            )
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
            if resolved in seen:
                raise ValueError(f"{key}: must differ from {seen[resolved]}, both are {folder}")
            seen[resolved] = key
        try:
            if builtin.WAIT_FLOW in self.flows:
                parse_job(b"{}", self.job_limits)
        except JobError as exc:
            raise ValueError(f"defaults: {exc}") from None
        return self

    def registry(self) -> Registry:
        """The registry of this config's flows, not loaded yet (`Registry.load` imports them)."""
        return Registry(self.flows, self.files_dir)

    @property
    def job_limits(self) -> JobLimits:
        """The caps and defaults job files are checked against."""
        return JobLimits(
            max_timeout=self.max_timeout,
            max_sleep=self.max_sleep,
            max_bytes=self.max_job_bytes,
            default_timeout=self.defaults.timeout,
            default_sleep=self.defaults.sleep,
            flows=tuple(self.flows),
        )


KNOWN_KEYS = tuple(Settings.model_fields) + tuple(JobDefaults.model_fields)
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
        problems = humanize(exc, KNOWN_KEYS)
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _resolve_entrypoint(entrypoint: Any, base: Path) -> Any:
    """A file entrypoint (`path/to/file.py:function`) relative to the config's folder."""
    if not isinstance(entrypoint, str) or not _ENTRYPOINT.match(entrypoint.strip()):
        return entrypoint  # the model's check names the key
    path, function, by_file = split_entrypoint(entrypoint.strip())
    if not by_file:
        return entrypoint.strip()
    return f"{base / Path(path).expanduser()}:{function}"

"""Job files: read with a size cap, parse safely, validate into one typed `Job`.

Every way a job file can be wrong ends in `JobError`, whose message is one short line a person
can act on. Nothing in a job file is ever executed: YAML is parsed by a loader that only builds
plain scalars, lists and mappings. It refuses explicit tags (`!!python/...`, and the standard
ones too, some of which crash PyYAML's constructors), anchors and aliases (no billion-laughs
bombs), and stops at the first value past a small nesting depth or node count, so a hostile file
costs little to turn down.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from watcher import defaults, features
from watcher.jobs.messages import did_you_mean, humanize, show

__all__ = [
    "FLOW_NAME",
    "Job",
    "JobError",
    "JobLimits",
    "load_job",
    "parse_job",
    "read_document",
    "read_job_bytes",
    "validate_document",
]

MAX_DEPTH = 16
"""How deeply a job file's YAML may nest; a job needs 2 levels."""

MAX_NODES = 256
"""How many values (scalars, lists, mappings) a job file may hold; a job needs fewer than 10.
Reading stops at the first value past this, so a file of thousands of values costs little."""

MAX_PROBLEMS = 5
"""How many problems an error message lists before it says how many more there are."""

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"


_SYMLINK = "a symbolic link, not a job file; put the job file itself in the inbox"


class JobError(Exception):
    """A job file that cannot be run; the message says why, for the result file."""


@dataclass(frozen=True)
class JobLimits:
    """The caps and defaults a job is checked against (from the service config)."""

    max_timeout: float = defaults.MAX_TIMEOUT
    max_sleep: float = defaults.MAX_SLEEP
    max_bytes: int = defaults.MAX_JOB_BYTES
    default_timeout: float = defaults.JOB_TIMEOUT
    default_sleep: float | tuple[float, float] = defaults.JOB_SLEEP
    flows: tuple[str, ...] = (defaults.WAIT_FLOW,)
    """The registered flows (config `flows`) a job may name."""


def _seconds(value: Any, key: str, *, allow_zero: bool, cap: float) -> float:
    kind = "a number of seconds >= 0" if allow_zero else "a number of seconds > 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("dropflow", f"{key}: must be {kind}, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number):
        raise PydanticCustomError("dropflow", f"{key}: must be {kind}, got NaN")
    if number < 0 or (number == 0 and not allow_zero):
        raise PydanticCustomError("dropflow", f"{key}: must be {kind}, got {show(value)}")
    if number > cap:
        shown = "infinity" if isinstance(value, float) and math.isinf(value) else show(value)
        raise PydanticCustomError(
            "dropflow", f"{key}: must be at most {cap:g} seconds (the service's cap), got {shown}"
        )
    return number


FLOW_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
"""What a registered flow's name looks like (config `flows`, a job's `flow`)."""


class Job(BaseModel):
    """A validated job: which registered flow runs, with what, for how long.

    Wait jobs (the default flow) give `sleep` at the top level; other flows take their
    arguments under `parameters`, which are checked against the flow's own parameter schema
    once the flow is loaded (`watcher.config.registry`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flow: str = Field(
        defaults.WAIT_FLOW,
        description="The registered flow to run (the config's `flows`); default: wait.",
    )
    parameters: dict[str, Any] | None = Field(
        None,
        description="The flow's parameters, for flows other than wait.",
    )
    timeout: float = Field(
        defaults.JOB_TIMEOUT,
        description="Seconds the flow may run before it is stopped and the job canceled.",
    )
    sleep: float | tuple[float, float] = Field(
        defaults.JOB_SLEEP,
        description="Seconds of work: a number, or [min, max] to draw one at random.",
    )
    name: str | None = Field(
        None,
        description="A label for the flow run (default: the file name without its extension).",
    )

    @field_validator("flow", mode="before")
    @classmethod
    def _check_flow(cls, value: Any, info: ValidationInfo) -> str:
        limits: JobLimits = (info.context or {}).get("limits", JobLimits())
        if not isinstance(value, str) or not FLOW_NAME.match(value):
            raise PydanticCustomError(
                "dropflow", f"flow: must be the name of a registered flow, got {show(value)}"
            )
        if value not in limits.flows:
            registered = ", ".join(limits.flows) or "none"
            hint = did_you_mean(value, limits.flows)
            raise PydanticCustomError(
                "dropflow",
                f"flow: no flow named '{value}' is registered here{hint}; registered: {registered}",
            )
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _check_parameters(cls, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise PydanticCustomError(
                "dropflow",
                f"parameters: must be a mapping of parameter names to values, got {show(value)}",
            )
        for key in value:
            if not isinstance(key, str):
                raise PydanticCustomError(
                    "dropflow", f"parameters: a parameter name must be text, got {show(key)}"
                )
        return value

    @model_validator(mode="after")
    def _keys_of_the_flow(self) -> Job:
        if self.flow == defaults.WAIT_FLOW and self.parameters is not None:
            raise PydanticCustomError(
                "dropflow",
                "parameters: the wait flow takes 'timeout', 'sleep' and 'name' at the top level, "
                "not under 'parameters'",
            )
        if self.flow != defaults.WAIT_FLOW and "sleep" in self.model_fields_set:
            raise PydanticCustomError(
                "dropflow",
                f"sleep: only wait jobs have it; give flow '{self.flow}' its arguments under "
                "'parameters'",
            )
        return self

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any, info: ValidationInfo) -> float:
        limits: JobLimits = (info.context or {}).get("limits", JobLimits())
        return _seconds(value, "timeout", allow_zero=False, cap=limits.max_timeout)

    @field_validator("sleep", mode="before")
    @classmethod
    def _check_sleep(cls, value: Any, info: ValidationInfo) -> float | tuple[float, float]:
        limits: JobLimits = (info.context or {}).get("limits", JobLimits())
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise PydanticCustomError(
                    "dropflow",
                    f"sleep: a range must be [min, max] with two numbers, got {show(value)}",
                )
            low = _seconds(value[0], "sleep: min", allow_zero=True, cap=limits.max_sleep)
            high = _seconds(value[1], "sleep: max", allow_zero=True, cap=limits.max_sleep)
            if low > high:
                raise PydanticCustomError(
                    "dropflow",
                    f"sleep: the range [{low:g}, {high:g}] is reversed; write [min, max]",
                )
            return (low, high)
        return _seconds(value, "sleep", allow_zero=True, cap=limits.max_sleep)

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise PydanticCustomError("dropflow", f"name: must be text, got {show(value)}")
        text = str(value).strip()
        if not text or any(not ch.isprintable() for ch in text):
            raise PydanticCustomError(
                "dropflow", f"name: must be printable text on one line, got {show(value)}"
            )
        if len(text) > defaults.MAX_NAME_CHARS:
            raise PydanticCustomError(
                "dropflow",
                f"name: must be at most {defaults.MAX_NAME_CHARS} characters, got {len(text)}",
            )
        return text


KNOWN_KEYS = tuple(Job.model_fields)


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus tags, anchors, aliases, duplicate keys, deep nesting and
    more than a few values."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise JobError(
                f"YAML alias '*{show(event.anchor)[1:-1]}' at line "
                f"{event.start_mark.line + 1}: aliases are not allowed in job files"
            )
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if event.anchor is not None:
            raise JobError(
                f"YAML anchor '&{show(event.anchor)[1:-1]}' at line {line}: anchors and "
                "aliases are not allowed in job files"
            )
        # An explicit tag picks a constructor by name: refuse them all, so only the plain
        # scalars, lists and mappings of the implicit resolvers are ever built. ("!" is the
        # non-specific tag: it only makes a plain scalar text.)
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!":
            raise JobError(
                f"YAML tag '{_short_tag(tag)}' at line {line} is not allowed: job files hold "
                "plain values only"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise JobError(
                f"more than {MAX_NODES} values; a job file is a short mapping such as 'timeout: 2'"
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise JobError(f"nested deeper than {MAX_DEPTH} levels; a job file is a flat mapping")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise JobError(
                    f"a {kind} used as a key (line {key_node.start_mark.line + 1}); keys are "
                    "names such as 'timeout'"
                )
            key = key_node.value
            if key in seen:
                raise JobError(
                    f"the key '{show(key)[1:-1]}' appears twice (line "
                    f"{key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e3` as text; people mean a number, as YAML 1.2 says.
_JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
# YAML 1.1's merge key `<<` and value key `=` are plain text in a job file: a merge would let
# one key silently override another, and `=` has no constructor at all.
_JobLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in (f"{_YAML_TAG_PREFIX}merge", f"{_YAML_TAG_PREFIX}value")
    ]
    for first, resolvers in _JobLoader.yaml_implicit_resolvers.items()
}


def _short_tag(tag: str) -> str:
    short = f"!!{tag[len(_YAML_TAG_PREFIX) :]}" if tag.startswith(_YAML_TAG_PREFIX) else tag
    return show(short)[1:-1] if len(short) <= 80 else show(short[:77] + "...")[1:-1]


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        line = text.count("\n", 0, exc.position) + 1
        return (
            f"the character U+{exc.character:04X} at line {line} is a control or non-character "
            "code point, which YAML does not allow; a job file is plain text"
        )
    if isinstance(exc, yaml.constructor.ConstructorError) and exc.problem:
        if "tag" in exc.problem:
            tag = exc.problem.split("tag", 1)[1].strip(" '")
            where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
            return (
                f"YAML tag '{_clip(tag, 80)}'{where} is not allowed: job files hold plain "
                "values only"
            )
        return f"not a valid job file: {_clip(exc.problem)}"
    if isinstance(exc, yaml.composer.ComposerError) and "single document" in str(exc):
        return "several YAML documents; a job file holds exactly one mapping"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        if "'\\t'" in exc.problem:
            return f"a tab{where}, where YAML allows only spaces"
        context = f" {_clip(exc.context)}" if exc.context else ""
        return f"not valid YAML{where}: {_clip(exc.problem)}{context}"
    return f"not valid YAML: {_clip(str(exc))}"


def _clip(text: str, limit: int = 120) -> str:
    """PyYAML quotes the input in its messages: keep that to one short line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_job(data: bytes, limits: JobLimits | None = None) -> Job:
    """Parse and validate a job file's bytes.

    Raises:
        JobError: the bytes are not a valid job; the message says why.
    """
    limits = limits or JobLimits()
    return validate_document(read_document(data, limits), limits)


def read_document(data: bytes, limits: JobLimits | None = None) -> dict[str, Any]:
    """The first half of `parse_job`: a job file's bytes to its mapping, not yet validated.

    What the JSON Schema of a job (`watcher.config.schema`) describes is this mapping; every
    rejection here is about the file's bytes and syntax, which a schema cannot see.

    Raises:
        JobError: the bytes are not a YAML mapping with text keys; the message says why.
    """
    limits = limits or JobLimits()
    if len(data) > limits.max_bytes:
        raise JobError(f"larger than the {limits.max_bytes}-byte limit for job files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError(f"not valid UTF-8 text (bad byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        raise JobError(f"a NUL byte at offset {text.index(chr(0))}: not a text file")
    try:
        loader = _JobLoader(text)
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except JobError:
        raise
    except yaml.YAMLError as exc:
        raise JobError(_yaml_problem(exc, text)) from None
    except RecursionError:
        raise JobError("nested too deeply to read; a job file is a flat mapping") from None
    except (ValueError, OverflowError) as exc:
        # e.g. an integer literal of more than 4300 digits, or a date such as 2001-13-45
        raise JobError(_value_problem(exc)) from None
    if document is None:
        raise JobError("empty file; a job file is a YAML mapping such as 'timeout: 2'")
    if not isinstance(document, dict):
        raise JobError(
            f"not a YAML mapping of keys to values (such as 'timeout: 2'), got {show(document)}"
        )
    for key in document:
        if not isinstance(key, str):
            raise JobError(f"a key that is not text: {show(key)}")
    return document


def validate_document(document: dict[str, Any], limits: JobLimits | None = None) -> Job:
    """The second half of `parse_job`: a job file's mapping to a `Job`, with the defaults.

    Raises:
        JobError: the mapping is not a valid job; the message says why.
    """
    limits = limits or JobLimits()
    merged: dict[str, Any] = {"timeout": limits.default_timeout}
    if document.get("flow", defaults.WAIT_FLOW) == defaults.WAIT_FLOW:
        merged["sleep"] = _as_yaml(limits.default_sleep)
    merged.update(document)
    try:
        return Job.model_validate(merged, context={"limits": limits})
    except ValidationError as exc:
        problems = humanize(exc, KNOWN_KEYS)
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"and {more} more problem{'s' * (more > 1)}"]
        raise JobError("; ".join(problems)) from None


def _value_problem(exc: ValueError | OverflowError) -> str:
    text = str(exc)
    if "integer string conversion" in text:
        return "a number with more than 4300 digits, which cannot be read"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"a value that cannot be read ({first[:100]})"


def _as_yaml(sleep: float | tuple[float, float]) -> float | list[float]:
    return list(sleep) if isinstance(sleep, tuple) else sleep


def read_job_bytes(path: Path, max_bytes: int) -> bytes:
    """Read at most `max_bytes + 1` bytes of a regular file, never following a symlink.

    Opening with O_NONBLOCK means a FIFO can never block the service; fstat on the open
    descriptor means a file swapped between the check and the read is not misjudged.

    Raises:
        JobError: the entry is not a plain regular file, or has vanished.
        OSError: an unexpected I/O error (a disk error, too many open files): the file
            itself may be fine.
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0) if features.current().nofollow else 0
    flags = os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise JobError("the file vanished before it could be read") from None
    mode = before.st_mode
    if stat.S_ISLNK(mode):
        raise JobError(_SYMLINK)
    if not stat.S_ISREG(mode):
        raise JobError(f"a {_kind(mode)}, not a job file")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise JobError("the file vanished before it could be read") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JobError(_SYMLINK) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise JobError("the service may not read this file (permission denied)") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            # replaced by a socket or device between the check and the open
            raise JobError("a socket or device, not a job file") from None
        raise
    try:
        info = os.fstat(fd)
        if not nofollow and (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            # Swapped since the check: without O_NOFOLLOW the open may have followed a link.
            raise JobError(_SYMLINK)
        if not stat.S_ISREG(info.st_mode):
            raise JobError(f"a {_kind(info.st_mode)}, not a job file")
        if info.st_nlink > 1:
            raise JobError("a hard link to another file; put a copy of the job in the inbox")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def load_job(path: Path, limits: JobLimits | None = None) -> Job:
    """Read and validate the job file at `path` (see `read_job_bytes` and `parse_job`)."""
    limits = limits or JobLimits()
    return parse_job(read_job_bytes(path, limits.max_bytes), limits)

"""The typed job model: what a valid job is, and the one error every invalid job ends in.

A job file's mapping (see `watcher.jobs.reading` for how the bytes become one) is checked here
into a frozen `Job`, against the caps of the service config (`JobLimits`). Every way it can be
wrong ends in `JobError`, whose message is one short line a person can act on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

from watcher import defaults
from watcher.jobs.messages import did_you_mean, humanize, limit_problems, show

__all__ = [
    "FLOW_NAME",
    "KNOWN_KEYS",
    "Job",
    "JobError",
    "JobLimits",
    "validate_document",
]


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
    default_flow: str = defaults.WAIT_FLOW
    """The flow of a job that names none (its route's `flow`)."""
    default_parameters: Mapping[str, Any] = field(default_factory=dict)
    """Parameters of jobs that run `default_flow`, for keys their `parameters` leave out."""


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


def validate_document(document: dict[str, Any], limits: JobLimits | None = None) -> Job:
    """The second half of `parse_job`: a job file's mapping to a `Job`, with the defaults.

    Raises:
        JobError: the mapping is not a valid job; the message says why.
    """
    limits = limits or JobLimits()
    merged: dict[str, Any] = {"timeout": limits.default_timeout}
    flow = document.get("flow", limits.default_flow)
    if flow != defaults.WAIT_FLOW:
        merged["flow"] = flow
    if flow == defaults.WAIT_FLOW:
        merged["sleep"] = _as_yaml(limits.default_sleep)
    merged.update(document)
    given = document.get("parameters", {})
    if flow == limits.default_flow and limits.default_parameters and isinstance(given, dict):
        merged["parameters"] = {**limits.default_parameters, **given}
    try:
        return Job.model_validate(merged, context={"limits": limits})
    except ValidationError as exc:
        raise JobError("; ".join(limit_problems(humanize(exc, KNOWN_KEYS)))) from None


def _as_yaml(sleep: float | tuple[float, float]) -> float | list[float]:
    return list(sleep) if isinstance(sleep, tuple) else sleep

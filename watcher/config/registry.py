"""The flows a job may run: the config's `flows`, imported once, each with its parameter schema.

A job file only ever names a registered flow; the import paths live in the config, which the
operator writes. Each flow's parameters are checked before any run against the JSON Schema that
Prefect derives from the flow function's signature (the schema a deployment of it gets too), and
every parameter typed as a path must name a file inside the config's `files_dir`.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher import defaults
from watcher.jobs.messages import did_you_mean, limit_problems, show
from watcher.jobs.model import Job, JobError
from watcher.jobs.paths import PathRefused, confine

if TYPE_CHECKING:
    from prefect import Flow

__all__ = [
    "RegisteredFlow",
    "Registry",
    "RegistryError",
    "prefect_entrypoint",
    "split_entrypoint",
]

logger = logging.getLogger(__name__)

_TYPES = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def split_entrypoint(entrypoint: str) -> tuple[str, str, bool]:
    """`(where, function, by_file)` of `module.path:function` or `path/to/file.py:function`."""
    where, _, function = entrypoint.rpartition(":")
    return where, function, where.endswith(".py")


def prefect_entrypoint(entrypoint: str) -> str:
    """The form Prefect's loader reads: `file.py:function`, or `module.path.function`."""
    where, function, by_file = split_entrypoint(entrypoint)
    return entrypoint if by_file else f"{where}.{function}"


class RegistryError(Exception):
    """A registered flow cannot be loaded; the message names the flow and the import error."""


@dataclass(frozen=True)
class RegisteredFlow:
    """One loaded flow of the registry."""

    name: str
    """Its name in the config (what a job's `flow:` says)."""
    entrypoint: str
    flow: Flow[..., Any]
    schema: dict[str, Any]
    """Prefect's parameter schema of the flow function (JSON Schema)."""
    is_async: bool
    takes_any_keyword: bool = False
    path_parameters: frozenset[str] = field(default_factory=frozenset)

    @property
    def prefect_name(self) -> str:
        """The flow's own name in Prefect (`@flow(name=...)`), which deployments are under."""
        return str(self.flow.name)


class Registry:
    """The config's flows: names and entrypoints now, the flows themselves after `load`."""

    def __init__(self, entrypoints: Mapping[str, str], files_dir: Path) -> None:
        self.entrypoints = dict(entrypoints)
        self.files_dir = files_dir
        self._loaded: dict[str, RegisteredFlow] = {}

    @classmethod
    def default(cls) -> Registry:
        """The registry of a config that registers no flows: wait only, `defaults.FILES_DIR`."""
        return cls(defaults.FLOWS, Path(defaults.FILES_DIR))

    @property
    def names(self) -> tuple[str, ...]:
        """The registered names, in the config's order."""
        return tuple(self.entrypoints)

    @property
    def loaded(self) -> bool:
        """Whether `load` has run."""
        return len(self._loaded) == len(self.entrypoints)

    def load(self) -> None:
        """Import every entrypoint (once); imports Prefect.

        Raises:
            RegistryError: an entrypoint cannot be imported, is not a Prefect flow, or is a
                generator flow.
        """
        for name, entrypoint in self.entrypoints.items():
            if name not in self._loaded:
                self._loaded[name] = _load(name, entrypoint)

    def get(self, name: str) -> RegisteredFlow:
        """A loaded flow by its registered name."""
        return self._loaded[name]

    def loaded_flows(self) -> Iterable[RegisteredFlow]:
        """Every loaded flow, in the config's order."""
        return (self._loaded[name] for name in self.entrypoints if name in self._loaded)

    def parameters(self, job: Job) -> dict[str, Any]:
        """The parameters `job` runs its flow with, checked against the flow's schema.

        Wait jobs' keys were checked by the job model already. Paths come back resolved,
        inside `files_dir`.

        Raises:
            JobError: a parameter is unknown, missing or of the wrong type, or a path leads
                outside `files_dir`; the message names each parameter and its problem.
        """
        if job.flow == defaults.WAIT_FLOW:
            return {}
        flow = self.get(job.flow)
        given = dict(job.parameters or {})
        problems = _problems(flow, given)
        if problems:
            raise JobError("; ".join(limit_problems(problems)))
        for key in sorted(flow.path_parameters & set(given)):
            if given[key] is None:
                continue
            try:
                given[key] = str(confine(given[key], self.files_dir, f"parameters.{key}"))
            except PathRefused as exc:
                raise JobError(str(exc)) from None
        return given


def _after(before: list[str]) -> None:
    """Put the folder holding the `watcher` package back at the head of `sys.path` once Prefect
    has put a flow file's folder (and the working folder) there: the flow keeps its imports, but
    a `watcher` of the user's (a tests folder beside the flow file, say) can never be imported
    instead of dropflow, here or in a spawned flow process, which inherits this `sys.path`. An
    editable install finds dropflow through a finder that Python asks only after `sys.path`."""
    if sys.path == before:
        return
    own = str(Path(__file__).resolve().parents[2])
    sys.path[:] = [own, *(entry for entry in sys.path if entry != own)]


def _load(name: str, entrypoint: str) -> RegisteredFlow:
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    before = list(sys.path)
    try:
        loaded: Flow[..., Any] = load_flow_from_entrypoint(
            prefect_entrypoint(entrypoint), use_placeholder_flow=False
        )
    except Exception as exc:
        cause = getattr(exc, "user_exc", None) or exc  # a ScriptError wraps the script's error
        raise RegistryError(
            f"flows: {name}: cannot load {entrypoint}: {type(cause).__name__}: {cause}"
        ) from exc
    finally:
        _after(before)
    if not isinstance(loaded, Flow):  # pragma: no cover - Prefect checks this itself
        raise RegistryError(f"flows: {name}: {entrypoint} is not a Prefect flow")
    if loaded.isgenerator:
        raise RegistryError(
            f"flows: {name}: {entrypoint} is a generator flow; dropflow runs flows that return"
        )
    schema = parameter_schema(loaded.fn).model_dump_for_openapi()
    signature = inspect.signature(loaded.fn)
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    paths = frozenset(key for key, prop in schema.get("properties", {}).items() if _is_path(prop))
    logger.debug("flow %s: %s (%s)", name, entrypoint, "async" if loaded.isasync else "sync")
    return RegisteredFlow(
        name=name,
        entrypoint=entrypoint,
        flow=loaded,
        schema=schema,
        is_async=bool(loaded.isasync),
        takes_any_keyword=any_keyword,
        path_parameters=paths,
    )


def _is_path(prop: dict[str, Any]) -> bool:
    if prop.get("format") == "path":
        return True
    return any(_is_path(option) for option in prop.get("anyOf", ()) if isinstance(option, dict))


def _problems(flow: RegisteredFlow, given: dict[str, Any]) -> list[str]:
    from prefect.utilities.schema_tools.validation import validate

    properties: dict[str, Any] = flow.schema.get("properties", {})
    problems = []
    if not flow.takes_any_keyword:
        for key in given:
            if key not in properties:
                takes = ", ".join(properties) or "no parameters"
                problems.append(
                    f"parameters.{show(key)[1:-1]}: flow '{flow.name}' has no such parameter"
                    f"{did_you_mean(key, properties)}; it takes {takes}"
                )
    for error in validate(given, flow.schema, raise_on_error=False):
        problems.append(_describe(flow, error))
    return problems


def _describe(flow: RegisteredFlow, error: Any) -> str:
    where = "parameters" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    )
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return f"parameters.{missing}: missing; flow '{flow.name}' requires it"
    if error.validator == "type":
        wanted = error.validator_value
        kinds = [wanted] if isinstance(wanted, str) else list(wanted)
        kind = " or ".join(_TYPES.get(k, k) for k in kinds)
        return f"{where}: must be {kind}, got {show(error.instance)}"
    if error.validator == "anyOf":
        # `list[str] | None` given `[1]`: the option of the value's own kind says what is wrong.
        deeper = [sub for sub in error.context or () if sub.validator != "type"]
        if deeper:
            return _describe(flow, deeper[0])
        options = error.validator_value
        kinds = [_TYPES.get(str(option.get("type")), "another form") for option in options]
        return f"{where}: must be {' or '.join(kinds)}, got {show(error.instance)}"
    message = " ".join(str(error.message).split())
    return f"{where}: {message if len(message) <= 120 else message[:117] + '...'}"

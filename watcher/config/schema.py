"""The JSON Schema (draft 2020-12) of a job file, for editors: `dropflow schema`.

It is generated from the job model (`watcher.jobs.model.Job`: its keys, types, descriptions and
`additionalProperties: false`), then given what the model checks in code: the caps and the
defaults of the config in use, the sign of each number, the two-number form of a range, and
the shape of a name. With flows other than wait registered, it holds one schema per flow,
chosen by the job's `flow` (an `if`/`then` each): wait's keys for wait jobs, and for each
other flow `parameters` as Prefect's parameter schema of that flow's function.

What a schema cannot say, the service still checks (and `dropflow validate` too):

- everything about the file rather than its data: its size, UTF-8, NUL and control bytes,
  YAML tags, anchors and aliases, nesting, duplicate keys, several documents, keys that
  are not text (an editor's YAML parser turns them into text);
- NaN (`.nan`), which JSON does not have: a schema validator compares it with nothing;
- that a range's min is at most its max;
- that a name is at most 100 characters once its surrounding spaces are trimmed, and that
  it has no non-printable character outside the common ones the pattern lists.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from watcher import defaults
from watcher.config.registry import RegisteredFlow
from watcher.jobs.model import FLOW_NAME, Job, JobLimits

__all__ = ["DRAFT", "job_schema"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Controls, the separators and the invisible format characters Python's isprintable() refuses.
_NOT_PRINTABLE = r"\x00-\x1f\x7f-\xa0\xad\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ufeff"
NAME_PATTERN = rf"^(?=.*\S)[^{_NOT_PRINTABLE}]*$"
"""Some character that is not a space, and none that is not printable."""


def _seconds(*, allow_zero: bool, cap: float) -> dict[str, Any]:
    bound = "minimum" if allow_zero else "exclusiveMinimum"
    return {"type": "number", bound: 0, "maximum": cap}


def _plain(value: float | tuple[float, float]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


def job_schema(
    limits: JobLimits | None = None, flows: Mapping[str, RegisteredFlow] | None = None
) -> dict[str, Any]:
    """The schema of a job file under `limits` (the config's caps, defaults and flow names).

    `flows`: the loaded registered flows (`Registry.loaded_flows`); needed for each flow other
    than wait that `limits.flows` names.
    """
    limits = limits or JobLimits()
    flows = flows or {}
    others = [name for name in limits.flows if name != defaults.WAIT_FLOW]
    if set(others) - set(flows):
        raise ValueError(f"no parameter schema for the flows {sorted(set(others) - set(flows))}")
    props = _properties(limits)
    flow = props.pop("flow")
    parameters = props.pop("parameters")
    flow["enum"] = list(limits.flows)
    description = (
        "A job for a dropflow hot folder: how long the work takes (sleep), how long the flow "
        f"waits for it (timeout, at most {limits.max_timeout:g} s here), and a name."
    )
    schema: dict[str, Any] = {"$schema": DRAFT, "title": "dropflow job file", "type": "object"}
    if not others:
        schema["description"] = description
        schema["properties"] = {"flow": flow, **props}
        schema["additionalProperties"] = False
        return schema
    schema["description"] = (
        "A job for a dropflow hot folder: which registered flow runs (flow, default "
        f"{limits.default_flow}), "
        "with what (parameters; for wait: sleep), for how long (timeout, at most "
        f"{limits.max_timeout:g} s here), and a name."
    )
    schema["properties"] = {"flow": flow}
    branches = []
    definitions: dict[str, Any] = {}
    if defaults.WAIT_FLOW in limits.flows:
        wait_props = {"flow": {"const": defaults.WAIT_FLOW}, **props}
        branches.append(
            {
                "if": _chosen(defaults.WAIT_FLOW, limits.default_flow),
                "then": {"properties": wait_props, "additionalProperties": False},
            }
        )
    for name in others:
        params = _embedded(name, flows[name], definitions)
        params["description"] = parameters["description"]
        if name == limits.default_flow:
            _with_defaults(params, limits.default_parameters)
        branch_props = {
            "flow": {"const": name},
            "parameters": params,
            "timeout": props["timeout"],
            "name": props["name"],
        }
        required = ["parameters"] if params.get("required") else []
        branches.append(
            {
                "if": _chosen(name, limits.default_flow),
                "then": {
                    "properties": branch_props,
                    "required": required,
                    "additionalProperties": False,
                },
            }
        )
    schema["allOf"] = branches
    if definitions:
        schema["$defs"] = definitions
    return schema


def _chosen(name: str, default_flow: str) -> dict[str, Any]:
    """The condition of a job that runs `name`: it says so, or, for the default flow (its
    route's `flow`), it names no flow."""
    says = {"properties": {"flow": {"const": name}}}
    if name == default_flow:
        return {"anyOf": [{"not": {"required": ["flow"]}}, says]}
    return {"required": ["flow"], **says}


def _with_defaults(params: dict[str, Any], given: Mapping[str, Any]) -> None:
    """The default flow's parameter schema with its route's default parameters: each one's
    `default`, and no longer required."""
    properties = params.get("properties", {})
    for key, value in given.items():
        if key in properties:
            properties[key]["default"] = value
    required = [key for key in params.get("required", []) if key not in given]
    if required:
        params["required"] = required
    else:
        params.pop("required", None)


def _embedded(name: str, flow: RegisteredFlow, definitions: dict[str, Any]) -> dict[str, Any]:
    """A flow's parameter schema, its definitions moved to the job schema's `$defs` under
    names of their own (`<flow>.<definition>`), with every `$ref` rewritten to match."""
    assert FLOW_NAME.match(name)
    schema = flow.schema
    own = copy.deepcopy(dict(schema))
    renamed = {key: f"{name}.{key}" for key in own.pop("definitions", {}) or {}}
    for key, value in (schema.get("definitions") or {}).items():
        definitions[renamed[key]] = _rewrite(copy.deepcopy(value), renamed)
    params: dict[str, Any] = _rewrite(own, renamed)
    params.pop("title", None)
    params["type"] = "object"
    if not flow.takes_any_keyword:
        params["additionalProperties"] = False
    return params


def _rewrite(node: Any, renamed: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/definitions/"):
                value = "#/$defs/" + renamed.get(value.split("/")[-1], value.split("/")[-1])
            out[key] = _rewrite(value, renamed)
        return out
    if isinstance(node, list):
        return [_rewrite(item, renamed) for item in node]
    return node


def _properties(limits: JobLimits) -> dict[str, Any]:
    """The job model's properties, given the checks the model makes in code."""
    schema = copy.deepcopy(Job.model_json_schema())
    props: dict[str, Any] = schema["properties"]
    if set(props) != {"flow", "parameters", "timeout", "sleep", "name"}:
        # A new key in the model needs its checks written here too, or editors would accept
        # values the service turns down.
        raise RuntimeError(f"job_schema does not know the job keys {sorted(props)}")

    timeout = props["timeout"]
    timeout.update(_seconds(allow_zero=False, cap=limits.max_timeout))
    timeout["default"] = limits.default_timeout

    sleep = props["sleep"]
    number, pair = sleep["anyOf"]
    number.update(_seconds(allow_zero=True, cap=limits.max_sleep))
    pair["prefixItems"] = [_seconds(allow_zero=True, cap=limits.max_sleep) for _ in range(2)]
    pair["description"] = "[min, max]: a number of seconds drawn uniformly from this range"
    sleep["default"] = _plain(limits.default_sleep)

    name = props["name"]
    text, null = name["anyOf"]
    text.update(maxLength=defaults.MAX_NAME_CHARS, pattern=NAME_PATTERN)
    # A number is a name too (`name: 42` is the name "42").
    name["anyOf"] = [text, {"type": "number"}, null]

    props["flow"] = {
        "type": "string",
        "description": "The registered flow to run (the config's `flows`); default: "
        f"{limits.default_flow}.",
        "default": limits.default_flow,
    }
    props["parameters"] = {"description": props["parameters"]["description"]}
    for key in props.values():
        key.pop("title", None)
    return props

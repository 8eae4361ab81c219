"""The JSON Schema (draft 2020-12) of a job file, for editors: `dropflow schema`.

It is generated from the job model (`watcher.jobs.Job`: its keys, types, descriptions and
`additionalProperties: false`), then given what the model checks in code: the caps and the
defaults of the config in use, the sign of each number, the two-number form of a range, and
the shape of a name.

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
from typing import Any

from watcher import defaults
from watcher.jobs import Job, JobLimits

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


def job_schema(limits: JobLimits | None = None) -> dict[str, Any]:
    """The schema of a job file under `limits` (the config's caps and defaults)."""
    limits = limits or JobLimits()
    schema = copy.deepcopy(Job.model_json_schema())
    props: dict[str, Any] = schema["properties"]
    if set(props) != {"timeout", "sleep", "name"}:
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

    for key in props.values():
        key.pop("title", None)
    return {
        "$schema": DRAFT,
        "title": "dropflow job file",
        "description": (
            "A job for a dropflow hot folder: how long the work takes (sleep), how long the flow "
            f"waits for it (timeout, at most {limits.max_timeout:g} s here), and a name."
        ),
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }

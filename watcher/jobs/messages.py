"""Turn pydantic validation errors into sentences a person can act on."""

from __future__ import annotations

import datetime
import difflib
import reprlib
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

__all__ = ["MAX_PROBLEMS", "did_you_mean", "humanize", "limit_problems", "one_line", "show"]

MAX_PROBLEMS = 5
"""How many problems an error message lists before it says how many more there are."""

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


def show(value: Any) -> str:
    """A short, bounded repr of a user's value (never the whole of a huge or deep value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (an empty value)"
    if isinstance(value, list):
        return f"a list {_repr.repr(value)}"
    if isinstance(value, dict):
        return f"a mapping {_repr.repr(value)}"
    if isinstance(value, datetime.datetime):
        return f"a date and time {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"a date {value.isoformat()}"
    if isinstance(value, bytes | bytearray):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, set | frozenset):
        return f"a set {_repr.repr(value)}"
    if isinstance(value, tuple):
        return f"a list {_repr.repr(list(value))}"
    return _repr.repr(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else an empty string."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def humanize(
    error: ValidationError,
    known_keys: Iterable[str],
    nested: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """One sentence per problem, each starting with the dotted key it concerns.

    `nested`: the known keys of each mapping of named entries (`routes: <name>: ...`), by the
    top-level key that holds them; an unknown key there is named with its entry.
    """
    known = list(known_keys)
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            first = str(item["loc"][0])
            if nested and first in nested and len(item["loc"]) > 2:
                where = ": ".join(str(part) for part in item["loc"][:-1])
                hint = did_you_mean(key, nested[first])
                lines.append(f"{where}: unknown key '{_repr.repr(key)[1:-1]}'{hint}")
                continue
            lines.append(f"unknown key '{_repr.repr(key)[1:-1]}'{did_you_mean(key, known)}")
            continue
        message = str(item["msg"])
        if item["type"] == "missing":
            lines.append(f"{': '.join(str(part) for part in item['loc'])}: required")
            continue
        if item["type"] == "dropflow":
            # our own validators already name the key and quote the value
            lines.append(message)
            continue
        if item["type"] not in {"value_error", "assertion_error"} and "input" in item:
            message = f"{message}, got {show(item['input'])}"
        lines.append(f"{loc}: {message}" if loc else message)
    return lines


def limit_problems(problems: list[str]) -> list[str]:
    """The first `MAX_PROBLEMS` problems, then `and N more problem(s)` if there are more."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], f"and {more} more problem{'s' * (more > 1)}"]


def one_line(text: str) -> str:
    """`text` safe to print as one line: control characters escaped (a file name may hold a
    newline), and bytes that are not UTF-8 (a file name may hold those too) as `\\udcff`."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out).encode("utf-8", "backslashreplace").decode("utf-8")

"""Reading a job file safely: its bytes with a size cap, then its YAML into a plain mapping.

Nothing in a job file is ever executed: YAML is parsed by a loader that only builds plain
scalars, lists and mappings. It refuses explicit tags (`!!python/...`, and the standard ones
too, some of which crash PyYAML's constructors), anchors and aliases (no billion-laughs bombs),
and stops at the first value past a small nesting depth or node count, so a hostile file costs
little to turn down. The mapping is then checked by the job model (`watcher.jobs.model`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from watcher import features
from watcher.jobs.messages import show
from watcher.jobs.model import Job, JobError, JobLimits, validate_document

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "DuplicateKeyError",
    "UniqueKeyLoader",
    "load_job",
    "parse_job",
    "read_document",
    "read_job_bytes",
]

MAX_DEPTH = 16
"""How deeply a job file's YAML may nest; a job needs 2 levels."""

MAX_NODES = 256
"""How many values (scalars, lists, mappings) a job file may hold; a job needs fewer than 10.
Reading stops at the first value past this, so a file of thousands of values costs little."""

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"


_SYMLINK = "a symbolic link, not a job file; put the job file itself in the inbox"


class DuplicateKeyError(ValueError):
    """A mapping gives the same key twice; the message names the key and its second line."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping, at any depth (PyYAML
    would keep the last one silently). The config file is read with it too."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if key in seen:
                raise DuplicateKeyError(
                    f"the key '{show(key)[1:-1]}' appears twice (line "
                    f"{key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _JobLoader(UniqueKeyLoader):
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
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise JobError(
                    f"a {kind} used as a key (line {key_node.start_mark.line + 1}); keys are "
                    "names such as 'timeout'"
                )
        try:
            return super().construct_mapping(node, deep=deep)
        except DuplicateKeyError as exc:
            raise JobError(str(exc)) from None


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


def _value_problem(exc: ValueError | OverflowError) -> str:
    text = str(exc)
    if "integer string conversion" in text:
        return "a number with more than 4300 digits, which cannot be read"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"a value that cannot be read ({first[:100]})"


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

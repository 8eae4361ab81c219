"""The hostile catalog, end to end: one real `dropflow run` gets every broken, hostile and odd
job file and inbox entry at once; each gets its result (an error naming the problem, or a normal
run for odd but valid names), nothing is executed or leaked, nothing is left stuck, and a
canary job dropped last still runs.

The service is started once for the module (`scene` below); the tests then read what it did.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PrefectServer, ServiceProcess, claim_folders, wait_until

# -- the service under test: small caps, so the config keys are what is checked ------------

MAX_TIMEOUT = 60
MAX_SLEEP = 30
MAX_BYTES = 32768
CONFIG: dict[str, Any] = {
    "settle_seconds": 0.2,
    "max_timeout": MAX_TIMEOUT,
    "max_sleep": MAX_SLEEP,
    "max_job_bytes": MAX_BYTES,
    "defaults": {"timeout": 5, "sleep": 0},
    "max_concurrent_jobs": 4,
    # Every entry in one folder, with a link planted at one job's name (a date folder would
    # put the jobs beside it, never at it; tests/watcher/folders covers the daily layout).
    "archive_layout": "flat",
}
VALID = b"timeout: 5\nsleep: 0\n"
BLOCKER_SLEEP = 8
BLOCKER = f"timeout: 20\nsleep: {BLOCKER_SLEEP}\n".encode()
BLOCKERS = [f"blocker-{i}.yaml" for i in range(4)]
"""Long jobs that hold every run slot while the hostile files arrive: an error result needs
no flow run, so it must not wait for a slot."""
PROMPT_SECONDS = 4.5
"""The asserted bound on drop-to-error-result (the issue's target is 1 s; this leaves room for
a busy machine, and is still well below BLOCKER_SLEEP)."""

# -- messages ------------------------------------------------------------------------------

TAG = "is not allowed: job files hold plain values only"
ANCHOR = "anchors and aliases are not allowed in job files"
DEEP = "nested deeper than 16 levels; a job file is a flat mapping"
T = "timeout: must be a number of seconds > 0, got"
S = "sleep: must be a number of seconds >= 0, got"
TCAP = f"timeout: must be at most {MAX_TIMEOUT} seconds (the service's cap), got"
SCAP = f"sleep: must be at most {MAX_SLEEP} seconds (the service's cap), got"
RANGE = "sleep: a range must be [min, max] with two numbers, got"
MAPPING = "not a YAML mapping of keys to values (such as 'timeout: 2'), got"
EMPTY = "empty file; a job file is a YAML mapping such as 'timeout: 2'"
DOCS = "several YAML documents; a job file holds exactly one mapping"
SIZE = f"larger than the {MAX_BYTES}-byte limit for job files"
SYMLINK = "a symbolic link, not a job file; put the job file itself in the inbox"
CONTROL = (
    "is a control or non-character code point, which YAML does not allow; a job file is plain text"
)


@dataclass
class World:
    """Where the scene happens, and what must never show up anywhere."""

    root: Path
    inbox: Path
    outside: Path
    secret: Path
    secret_text: str

    def marker(self, name: str) -> Path:
        return self.outside / f"pwned-{name}"


Maker = Callable[[World, Path], None]
"""Creates the entry at the given inbox path (for entries that are not a file's bytes)."""


@dataclass(frozen=True)
class Case:
    group: str
    file: str
    expect: str  # "error", "completed", or "none" (no result at all)
    message: str = ""  # for errors: exactly what follows "<file>: " in the result
    content: bytes | Callable[[World], bytes] | None = None
    make: Maker | None = None

    @property
    def id(self) -> str:
        return f"{self.group}/{self.file!r}"[:80]


def error(group: str, file: str, content: bytes | Callable[[World], bytes], message: str) -> Case:
    return Case(group, file, "error", message, content=content)


def entry(group: str, file: str, make: Maker, message: str, expect: str = "error") -> Case:
    return Case(group, file, expect, message, make=make)


def _touch(world: World, name: str) -> str:
    return f"['touch {world.marker(name)}']"


def _tag(name: str, template: str) -> Callable[[World], bytes]:
    return lambda world: template.replace("CMD", _touch(world, name)).encode()


BILLION_LAUGHS = b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + b"".join(
    b"%c: &%c [%s]\n" % (ord(b), ord(b), b",".join([b"*" + bytes([ord(b) - 1])] * 9))
    for b in "bcdefghi"
)

CONTENT_CASES = [
    # YAML tags that would construct objects: refused before anything is built.
    error(
        "tags",
        "tag-apply.yaml",
        _tag("apply", "!!python/object/apply:os.system CMD\n"),
        f"YAML tag '!!python/object/apply:os.system' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-apply-value.yaml",
        _tag("apply-value", "timeout: !!python/object/apply:os.system CMD\n"),
        f"YAML tag '!!python/object/apply:os.system' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-new.yaml",
        _tag("new", "sleep: !!python/object/new:subprocess.Popen [CMD]\n"),
        f"YAML tag '!!python/object/new:subprocess.Popen' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-name.yaml",
        b"name: !!python/name:os.system\n",
        f"YAML tag '!!python/name:os.system' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-module.yaml",
        b"name: !!python/module:os\n",
        f"YAML tag '!!python/module:os' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-verbatim.yaml",
        _tag("verbatim", "timeout: !<tag:yaml.org,2002:python/object/apply:os.system> CMD\n"),
        f"YAML tag '!!python/object/apply:os.system' at line 1 {TAG}",
    ),
    error(
        "tags",
        "tag-directive.yaml",
        _tag(
            "directive",
            "%TAG !p! tag:yaml.org,2002:python/\n---\ntimeout: !p!object/apply:os.system CMD\n",
        ),
        f"YAML tag '!!python/object/apply:os.system' at line 3 {TAG}",
    ),
    error("tags", "tag-local.yaml", b"timeout: !foo 3\n", f"YAML tag '!foo' at line 1 {TAG}"),
    # These four crashed PyYAML's safe constructor (KeyError, IndexError, AttributeError,
    # TypeError): the job was left claimed, with no result.
    error("tags", "tag-bool.yaml", b"timeout: !!bool abc\n", f"YAML tag '!!bool' at line 1 {TAG}"),
    error("tags", "tag-int-empty.yaml", b"timeout: !!int\n", f"YAML tag '!!int' at line 1 {TAG}"),
    error(
        "tags",
        "tag-timestamp.yaml",
        b"timeout: !!timestamp abc\n",
        f"YAML tag '!!timestamp' at line 1 {TAG}",
    ),
    error("tags", "tag-set.yaml", b"sleep: !!set [1]\n", f"YAML tag '!!set' at line 1 {TAG}"),
    # Bombs and nesting.
    error("bombs", "billion-laughs.yaml", BILLION_LAUGHS, f"YAML anchor '&a' at line 1: {ANCHOR}"),
    error(
        "bombs",
        "alias-undefined.yaml",
        b"timeout: *t\n",
        "YAML alias '*t' at line 1: aliases are not allowed in job files",
    ),
    error(
        "bombs",
        "merge-alias.yaml",
        b"base: &b {timeout: 1}\n<<: *b\n",
        f"YAML anchor '&b' at line 1: {ANCHOR}",
    ),
    error("bombs", "deep-flow-lists.yaml", b"[" * 5000 + b"]" * 5000, DEEP),
    error("bombs", "deep-flow-maps.yaml", b"{a: " * 3000 + b"}" * 3000, DEEP),
    error("bombs", "deep-block-lists.yaml", b"- " * 10000 + b"1\n", DEEP),
    error(
        "bombs",
        "deep-block-maps.yaml",
        "".join(" " * i + "a:\n" for i in range(200)).encode(),
        DEEP,
    ),
    error("bombs", "unclosed-brackets.yaml", b"[" * 30000, DEEP),
    error(
        "bombs",
        "long-list.yaml",
        b"sleep: [" + b"1, " * 5000 + b"1]\n",
        "more than 256 values; a job file is a short mapping such as 'timeout: 2'",
    ),
    # timeout values
    error("timeout", "t-nan.yaml", b"timeout: .nan\n", f"{T} NaN"),
    error("timeout", "t-inf.yaml", b"timeout: .inf\n", f"{TCAP} infinity"),
    error("timeout", "t-neg-inf.yaml", b"timeout: -.inf\n", f"{T} -inf"),
    error("timeout", "t-negative.yaml", b"timeout: -1\n", f"{T} -1"),
    error("timeout", "t-zero.yaml", b"timeout: 0\n", f"{T} 0"),
    error("timeout", "t-huge.yaml", b"timeout: 1e300\n", f"{TCAP} 1e+300"),
    error("timeout", "t-overflow.yaml", b"timeout: 1e400\n", f"{TCAP} infinity"),
    error(
        "timeout",
        "t-digits.yaml",
        b"timeout: " + b"9" * 5000 + b"\n",
        "a number with more than 4300 digits, which cannot be read",
    ),
    error("timeout", "t-string.yaml", b"timeout: ten\n", f"{T} 'ten'"),
    error("timeout", "t-quoted.yaml", b"timeout: '3'\n", f"{T} '3'"),
    error("timeout", "t-units.yaml", b"timeout: 10s\n", f"{T} '10s'"),
    error("timeout", "t-bool.yaml", b"timeout: true\n", f"{T} true"),
    error("timeout", "t-yes.yaml", b"timeout: yes\n", f"{T} true"),
    error("timeout", "t-list.yaml", b"timeout: [1, 2]\n", f"{T} a list [1, 2]"),
    error(
        "timeout", "t-mapping.yaml", b"timeout: {seconds: 3}\n", f"{T} a mapping {{'seconds': 3}}"
    ),
    error("timeout", "t-null.yaml", b"timeout:\n", f"{T} null (an empty value)"),
    error("timeout", "t-date.yaml", b"timeout: 2001-12-14\n", f"{T} a date 2001-12-14"),
    # sleep values
    error("sleep", "s-nan.yaml", b"sleep: .nan\n", f"{S} NaN"),
    error("sleep", "s-inf.yaml", b"sleep: .inf\n", f"{SCAP} infinity"),
    error("sleep", "s-negative.yaml", b"sleep: -0.5\n", f"{S} -0.5"),
    error("sleep", "s-huge.yaml", b"sleep: 1e300\n", f"{SCAP} 1e+300"),
    error("sleep", "s-string.yaml", b"sleep: fast\n", f"{S} 'fast'"),
    error("sleep", "s-bool.yaml", b"sleep: false\n", f"{S} false"),
    error("sleep", "s-null.yaml", b"sleep: null\n", f"{S} null (an empty value)"),
    error(
        "sleep",
        "s-mapping.yaml",
        b"sleep: {min: 1, max: 2}\n",
        f"{S} a mapping {{'max': 2, 'min': 1}}",
    ),
    # sleep ranges
    error(
        "ranges",
        "r-reversed.yaml",
        b"sleep: [3, 1]\n",
        "sleep: the range [3, 1] is reversed; write [min, max]",
    ),
    error("ranges", "r-empty.yaml", b"sleep: []\n", f"{RANGE} a list []"),
    error("ranges", "r-one.yaml", b"sleep: [1]\n", f"{RANGE} a list [1]"),
    error("ranges", "r-three.yaml", b"sleep: [1, 2, 3]\n", f"{RANGE} a list [1, 2, 3]"),
    error(
        "ranges",
        "r-nan.yaml",
        b"sleep: [.nan, 1]\n",
        "sleep: min: must be a number of seconds >= 0, got NaN",
    ),
    error(
        "ranges",
        "r-inf.yaml",
        b"sleep: [1, .inf]\n",
        f"sleep: max: must be at most {MAX_SLEEP} seconds (the service's cap), got infinity",
    ),
    error(
        "ranges",
        "r-negative.yaml",
        b"sleep: [-1, 2]\n",
        "sleep: min: must be a number of seconds >= 0, got -1",
    ),
    error(
        "ranges",
        "r-string.yaml",
        b"sleep: [a, 2]\n",
        "sleep: min: must be a number of seconds >= 0, got 'a'",
    ),
    error(
        "ranges",
        "r-nested.yaml",
        b"sleep: [[1], 2]\n",
        "sleep: min: must be a number of seconds >= 0, got a list [1]",
    ),
    error("ranges", "r-dash.yaml", b"sleep: 1-3\n", f"{S} '1-3'"),
    error(
        "ranges",
        "r-unclosed.yaml",
        b"sleep: [1, 2\n",
        "not valid YAML at line 2: expected ',' or ']', but got '<stream end>' while parsing "
        "a flow sequence",
    ),
    error(
        "ranges",
        "r-double-comma.yaml",
        b"sleep: [1,, 2]\n",
        "not valid YAML at line 1: expected the node content, but found ',' while parsing a "
        "flow node",
    ),
    # the caps from the config
    error("caps", "cap-timeout.yaml", b"timeout: 61\n", f"{TCAP} 61"),
    error("caps", "cap-sleep.yaml", b"sleep: 30.5\n", f"{SCAP} 30.5"),
    error(
        "caps",
        "cap-sleep-range.yaml",
        b"sleep: [0, 31]\n",
        f"sleep: max: must be at most {MAX_SLEEP} seconds (the service's cap), got 31",
    ),
    # the shape of the document
    error(
        "shape",
        "unknown-key.yaml",
        b"timout: 3\n",
        "unknown key 'timout' (did you mean 'timeout'?)",
    ),
    error(
        "shape", "unknown-case.yaml", b"Sleep: 0\n", "unknown key 'Sleep' (did you mean 'sleep'?)"
    ),
    error("shape", "unknown-extra.yaml", b"timeout: 1\ncolour: red\n", "unknown key 'colour'"),
    error(
        "shape",
        "unknown-many.yaml",
        b"".join(b"key%d: 1\n" % i for i in range(8)),
        "unknown key 'key0'; unknown key 'key1'; unknown key 'key2'; unknown key 'key3'; "
        "unknown key 'key4'; and 3 more problems",
    ),
    error("shape", "top-list.yaml", b"- timeout: 1\n", f"{MAPPING} a list [{{'timeout': 1}}]"),
    error("shape", "top-scalar.yaml", b"hello\n", f"{MAPPING} 'hello'"),
    error("shape", "top-int.yaml", b"42\n", f"{MAPPING} 42"),
    error("shape", "empty.yaml", b"", EMPTY),
    error("shape", "whitespace.yaml", b"\n  \n\n", EMPTY),
    error("shape", "comments.yaml", b"# nothing\n# here\n", EMPTY),
    error("shape", "doc-marker.yaml", b"---\n", EMPTY),
    error("shape", "null-doc.yaml", b"~\n", EMPTY),
    error("shape", "several-docs.yaml", b"timeout: 1\n---\ntimeout: 2\n", DOCS),
    error("shape", "trailing-doc.yaml", b"timeout: 1\n---\n", DOCS),
    error(
        "shape",
        "duplicate-key.yaml",
        b"timeout: 1\ntimeout: 2\n",
        "the key 'timeout' appears twice (line 2)",
    ),
    error("shape", "key-int.yaml", b"1: 2\n", "a key that is not text: 1"),
    error(
        "shape",
        "key-list.yaml",
        b"[1]: 2\n",
        "a list used as a key (line 1); keys are names such as 'timeout'",
    ),
    error("shape", "merge-inline.yaml", b"<<: {timeout: 1}\n", "unknown key '<<'"),
    error("shape", "tab.yaml", b"timeout:\t1\n", "a tab at line 1, where YAML allows only spaces"),
    error(
        "shape",
        "bad-indent.yaml",
        b"name: x\n  y: z\n",
        "not valid YAML at line 2: mapping values are not allowed here",
    ),
    # bytes that are not text
    error(
        "bytes", "bad-utf8.yaml", b"timeout: \xff\n", "not valid UTF-8 text (bad byte at offset 9)"
    ),
    error(
        "bytes", "overlong.yaml", b"name: \xc0\xaf\n", "not valid UTF-8 text (bad byte at offset 6)"
    ),
    error(
        "bytes",
        "surrogate.yaml",
        b"name: \xed\xa0\x80\n",
        "not valid UTF-8 text (bad byte at offset 6)",
    ),
    error(
        "bytes",
        "utf16.yaml",
        "timeout: 1\n".encode("utf-16"),
        "not valid UTF-8 text (bad byte at offset 0)",
    ),
    error(
        "bytes",
        "png.yaml",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "not valid UTF-8 text (bad byte at offset 0)",
    ),
    error("bytes", "nul.yaml", b"timeout: 1\x00\n", "a NUL byte at offset 10: not a text file"),
    error("bytes", "all-nul.yaml", b"\x00" * 4096, "a NUL byte at offset 0: not a text file"),
    error(
        "bytes",
        "elf.yaml",
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56,
        "a NUL byte at offset 7: not a text file",
    ),
    error(
        "bytes",
        "bell.yaml",
        b"timeout: 1\nname: a\x07b\n",
        f"the character U+0007 at line 2 {CONTROL}",
    ),
    error(
        "bytes",
        "noncharacter.yaml",
        "name: \ufffe\n".encode(),
        f"the character U+FFFE at line 1 {CONTROL}",
    ),
    # size
    error("size", "over-cap.yaml", VALID + b"#" * (MAX_BYTES - len(VALID)) + b"\n", SIZE),
]


def _symlink(target: Callable[[World], Path | str]) -> Maker:
    return lambda world, path: path.symlink_to(target(world))


def _fifo(world: World, path: Path) -> None:
    os.mkfifo(path)


def _directory(world: World, path: Path) -> None:
    path.mkdir()
    (path / "inner.yaml").write_bytes(VALID)


def _hard_link(world: World, path: Path) -> None:
    os.link(world.secret, path)


def _socket(world: World, path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _device(world: World, path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("cannot make a device node here")


def _sparse(world: World, path: Path) -> None:
    staged = path.parent / f".staged-{path.name}"
    staged.write_bytes(VALID)
    os.truncate(staged, 1 << 30)  # 1 GiB, nearly all holes
    os.rename(staged, path)


def _vanish(world: World, path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(b"timeout: 1\n")
        handle.flush()
        path.unlink()


def _replaced_by_link(world: World, path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(b"timeout: 1\n")
        handle.flush()
        link = path.parent / f".link-{secrets.token_hex(4)}"
        link.symlink_to(world.secret)
        os.replace(link, path)


def _replaced_by_valid(world: World, path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(b"timeout: [")  # half-written, broken: never read
        handle.flush()
        fresh = path.parent / f".fresh-{secrets.token_hex(4)}"
        fresh.write_bytes(VALID)
        os.replace(fresh, path)


ENTRY_CASES = [
    entry("entries", "link-secret.yaml", _symlink(lambda w: w.secret), SYMLINK),
    entry("entries", "link-relative.yaml", _symlink(lambda w: "../outside/secret.yaml"), SYMLINK),
    entry("entries", "link-passwd.yaml", _symlink(lambda w: "/etc/passwd"), SYMLINK),
    entry("entries", "link-dev-zero.yaml", _symlink(lambda w: "/dev/zero"), SYMLINK),
    entry("entries", "link-dangling.yaml", _symlink(lambda w: w.outside / "nowhere"), SYMLINK),
    entry("entries", "link-loop.yaml", _symlink(lambda w: "link-loop.yaml"), SYMLINK),
    entry("entries", "link-dir.yaml", _symlink(lambda w: w.outside), SYMLINK),
    entry("entries", "link-valid.yaml", _symlink(lambda w: w.outside / "valid.yaml"), SYMLINK),
    entry("entries", "fifo.yaml", _fifo, "a named pipe (FIFO), not a job file"),
    entry("entries", "dir.yaml", _directory, "a directory, not a job file"),
    entry(
        "entries",
        "hard-link.yaml",
        _hard_link,
        "a hard link to another file; put a copy of the job in the inbox",
    ),
    entry("entries", "socket.yaml", _socket, "a socket, not a job file"),
    entry("entries", "device.yaml", _device, "a device, not a job file"),
    entry("entries", "replaced-by-link.yaml", _replaced_by_link, SYMLINK),
    entry("size", "sparse-1gib.yaml", _sparse, SIZE),
    # Gone before it was claimed: there is nothing to report on, and nothing may break.
    entry("entries", "vanished.yaml", _vanish, "", expect="none"),
]


def ok(group: str, file: str, content: bytes = VALID) -> Case:
    return Case(group, file, "completed", content=content)


VALID_CASES = [
    ok("names", "with spaces.yaml"),
    ok("names", " leading space.yaml"),
    ok("names", "ünïcødé 日本語.yaml"),
    ok("names", "🚀 rocket.yaml"),
    ok("names", "-leading-dash.yaml"),
    ok("names", "--help.yaml"),
    ok("names", "new\nline.yaml"),
    ok("names", "tab\there.yaml"),
    ok("names", "x" * 220 + ".yaml"),
    ok("names", "é" * 125 + ".yaml"),  # 255 bytes: the longest name a file can have
    ok("names", "$(touch pwned).yaml"),
    ok("names", "`touch pwned`;.yaml"),
    ok("names", 'it\'s "quoted".yaml'),
    ok("names", "back\\slash.yaml"),
    ok("names", "a..b.yaml"),
    ok("names", "double.yaml.yaml"),
    ok("names", "UPPER.YML"),
    ok("names", "percent %s %n {name}.yaml"),
    ok("names", "name-field.yaml", b"timeout: 5\nsleep: 0\nname: ../../../escape {x} %s\n"),
    ok("names", "name-unicode.yaml", "timeout: 5\nsleep: 0\nname: dépôt 日本 🚀\n".encode()),
    ok("caps", "at-cap.yaml", f"timeout: {MAX_TIMEOUT}\nsleep: [0, 0]\n".encode()),
    ok("size", "at-size-cap.yaml", VALID + b"#" * (MAX_BYTES - len(VALID) - 1) + b"\n"),
    ok("content", "crlf.yaml", b"timeout: 5\r\nsleep: 0\r\n"),
    ok("content", "bom.yaml", b"\xef\xbb\xbf" + VALID),
    ok("content", "defaults-only.yaml", b"{}\n"),
    ok("results", "planted.yaml"),
    ok("results", "planted-victim.yaml"),
    ok("results", "archive-planted.yaml"),
    Case("entries", "replaced-by-valid.yaml", "completed", make=_replaced_by_valid),
]

BAD_NAME = b"bad-\xff-utf8.yaml"
"""A file name that is not UTF-8 (Linux allows any bytes): odd, but a job like any other."""

CATALOG = [*CONTENT_CASES, *ENTRY_CASES, *VALID_CASES]
LONE = error(
    "lone",
    "lone-bomb.yaml",
    BILLION_LAUGHS,
    "YAML anchor '&a' at line 1: anchors and aliases are not allowed in job files",
)
HOSTILE = [c for c in CATALOG if c.expect != "completed"]


# -- the scene: one service, everything dropped at once ------------------------------------


@dataclass
class Arrival:
    result: dict[str, Any]
    path: Path
    seconds: float  # from the drop to the result file


@dataclass
class Scene:
    svc: ServiceProcess
    world: World
    dropped: dict[str, float] = field(default_factory=dict)
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    planted: dict[str, Path] = field(default_factory=dict)

    def result(self, case: Case) -> Arrival:
        if case.file in self.skipped:
            pytest.skip(self.skipped[case.file])
        arrival = self.arrivals.get(case.file)
        assert arrival is not None, f"no result for {case.file!r}\n{self.svc.log()[-3000:]}"
        return arrival


def _collect(scene: Scene, expected: set[str], timeout: float) -> None:
    """Poll the results folder; note when each job's result shows up. Always looks at least
    once (`timeout=0`: pick up whatever is there now)."""
    results = scene.svc.results
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        for entry in os.scandir(results):
            if entry.name in seen or entry.is_symlink() or entry.name.startswith("."):
                continue
            seen.add(entry.name)
            data = yaml.safe_load(Path(entry.path).read_text(encoding="utf-8"))
            job = str(data.get("job")) if isinstance(data, dict) else "?"
            if job in scene.dropped and job not in scene.arrivals:
                scene.arrivals[job] = Arrival(data, Path(entry.path), now - scene.dropped[job])
        if expected <= set(scene.arrivals) or now > deadline:
            return
        time.sleep(0.02)  # the polling interval


def _drop(scene: Scene, case: Case) -> None:
    world, inbox = scene.world, scene.svc.inbox
    path = inbox / case.file
    try:
        if case.make is not None:
            case.make(world, path)
        else:
            content = case.content(world) if callable(case.content) else case.content
            staged = inbox / f".staged-{secrets.token_hex(4)}"  # a dotfile: never a job
            staged.write_bytes(content or b"")
            os.rename(staged, path)  # renamed within the inbox: complete on arrival
    except pytest.skip.Exception as exc:
        scene.skipped[case.file] = str(exc)
        return
    scene.dropped[case.file] = time.monotonic()


@pytest.fixture(scope="module")
def scene(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    secret_text = f"TOP-SECRET-{secrets.token_hex(8)}"
    secret = outside / "secret.yaml"
    secret.write_text(f"timeout: 1\nname: {secret_text}\n")
    (outside / "valid.yaml").write_bytes(VALID)
    world = World(root, root / "inbox", outside, secret, secret_text)
    svc = ServiceProcess(
        root, CONFIG, api_url=prefect_server.url, prefect_home=root / "prefect-home"
    )
    scene = Scene(svc, world)

    # Symlinks planted at result names: the service must take the next free name, and never
    # write through them.
    svc.results.mkdir(parents=True)
    scene.planted["planted.yaml"] = outside / "planted-target"  # does not exist
    (svc.results / "planted.result.yaml").symlink_to(scene.planted["planted.yaml"])
    scene.planted["planted-victim.yaml"] = outside / "victim.txt"
    scene.planted["planted-victim.yaml"].write_text("ORIGINAL")
    (svc.results / "planted-victim.result.yaml").symlink_to(scene.planted["planted-victim.yaml"])
    # And one at the job's archive name: the file must not be moved through it.
    svc.archive.mkdir(parents=True)
    (svc.archive / "archive-planted.yaml").symlink_to(outside / "victim.txt")

    # A strict umask: result files must still get their explicit 0644.
    old_umask = os.umask(0o077)
    try:
        svc.start()
    finally:
        os.umask(old_umask)
    try:
        for name in BLOCKERS:
            _drop(scene, Case("blockers", name, "completed", content=BLOCKER))
        wait_until(lambda: svc.log().count("job started: blocker-") == len(BLOCKERS), 30)
        for case in CATALOG:
            if case.expect != "completed":
                _drop(scene, case)
        bad_name = os.fsencode(svc.inbox) + b"/" + BAD_NAME
        with open(bad_name, "wb") as handle:
            handle.write(VALID)
        scene.dropped[os.fsdecode(BAD_NAME)] = time.monotonic()
        for case in CATALOG:
            if case.expect == "completed":
                _drop(scene, case)
        # The canary goes last, after every hostile file.
        _drop(scene, Case("canary", "canary.yaml", "completed", content=VALID))
        expected = {name for name in scene.dropped if name != "vanished.yaml"}
        _collect(scene, expected, timeout=90)
        # One more hostile file, alone in a quiet service: the plain drop-to-result time.
        # It is also the fence for the vanished file: events arrive in order, so by its
        # result every event of the vanished file was handled long before (a result for it
        # would need a claim and a read too, begun earlier); a late one is collected below.
        _drop(scene, LONE)
        _collect(scene, {LONE.file}, timeout=30)
        _collect(scene, set(scene.dropped), timeout=0)
        # A result comes before its job's archive step: let the last claims finish before the
        # tests look (test_nothing_is_left_stuck reports whatever is left).
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not claim_folders(svc.processing), 10)
        yield scene
    finally:
        svc.kill()
        # Kept with pytest's temp folders (the last three runs), for a failure's post-mortem.
        (root / "service.log").write_text(svc.log(), encoding="utf-8", errors="replace")


# -- every case ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_case_gets_its_error(scene: Scene, case: Case) -> None:
    if case.expect == "none":
        assert case.file not in scene.arrivals, scene.arrivals[case.file].result
        return
    arrival = scene.result(case)
    result = arrival.result
    assert result["status"] == "error", result
    assert result["message"] == f"{case.file}: {case.message}"
    assert "flow_run_id" not in result and "sleep" not in result
    assert arrival.path.parent == scene.svc.results


VALID_IDS = [c.id for c in VALID_CASES]


@pytest.mark.parametrize("case", VALID_CASES, ids=VALID_IDS)
def test_odd_but_valid_case_runs(scene: Scene, case: Case) -> None:
    arrival = scene.result(case)
    assert arrival.result["status"] == "completed", arrival.result
    assert arrival.result["flow_run_id"]
    # Its result is right in results/, named after the job file: the stem cut to 200 bytes,
    # a backslash (a separator elsewhere) made "_".
    assert arrival.path.parent == scene.svc.results
    stem = case.file[: -len(Path(case.file).suffix)].replace("\\", "_")
    stem = stem.encode()[:200].decode("utf-8", "ignore")
    n = 2 if case.file in scene.planted else 1
    suffix = ".result.yaml" if n == 1 else f".result.{n}.yaml"
    assert arrival.path.name == f"{stem}{suffix}"


def test_a_name_that_is_not_utf8_runs(scene: Scene) -> None:
    name = os.fsdecode(BAD_NAME)
    arrival = scene.arrivals.get(name)
    assert arrival is not None, f"no result for {name!r}\n{scene.svc.log()[-3000:]}"
    assert arrival.result["status"] == "completed"
    assert arrival.path.parent == scene.svc.results


def test_the_canary_after_the_hostile_files_completes(scene: Scene) -> None:
    canary = scene.arrivals.get("canary.yaml")
    assert canary is not None, scene.svc.log()[-3000:]
    assert canary.result["status"] == "completed"
    assert scene.svc.proc is not None and scene.svc.proc.poll() is None


# -- across all cases ----------------------------------------------------------------------


def test_nothing_was_executed(scene: Scene) -> None:
    assert sorted(p.name for p in scene.world.outside.glob("pwned*")) == []
    assert not (scene.world.root / "pwned").exists()
    assert not (scene.svc.inbox / "pwned").exists()


def test_no_result_or_log_line_holds_what_a_link_pointed_at(scene: Scene) -> None:
    leaks = [scene.world.secret_text, "root:x:0:0"]
    for path in scene.svc.results.iterdir():
        if path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8")
        assert not any(leak in text for leak in leaks), (path.name, text)
    assert not any(leak in scene.svc.log() for leak in leaks)


def test_result_files_are_plain_0644_files_and_planted_links_untouched(scene: Scene) -> None:
    for path in scene.svc.results.iterdir():
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            assert path.name in {"planted.result.yaml", "planted-victim.result.yaml"}
            continue
        assert stat.S_ISREG(info.st_mode), path
        assert stat.S_IMODE(info.st_mode) == 0o644, (path.name, oct(info.st_mode))
    assert not scene.planted["planted.yaml"].exists()
    assert scene.planted["planted-victim.yaml"].read_text() == "ORIGINAL"
    # Nothing was written anywhere but results/ and archive/.
    assert sorted(p.name for p in scene.world.outside.iterdir()) == [
        "secret.yaml",
        "valid.yaml",
        "victim.txt",
    ]


def test_nothing_is_left_stuck(scene: Scene) -> None:
    assert list(claim_folders(scene.svc.processing)) == []
    assert list(scene.svc.inbox.iterdir()) == []
    assert scene.svc.proc is not None and scene.svc.proc.poll() is None
    # Every entry went to the archive, and the planted link there was left alone.
    archived = {p.name for p in scene.svc.archive.iterdir()}
    assert len(archived) == len(scene.arrivals) + 1, sorted(archived)
    assert (scene.svc.archive / "archive-planted.yaml").is_symlink()
    assert scene.planted["planted-victim.yaml"].read_text() == "ORIGINAL"


def test_the_log_shows_no_crash(scene: Scene) -> None:
    log = scene.svc.log()
    assert "Traceback" not in log and "job handler failed" not in log, log[-5000:]


def test_errors_arrive_promptly(scene: Scene) -> None:
    """The issue asks for an error result within 1 s of the file being complete. Every error
    case is dropped in one burst while long jobs hold every run slot; the figures are printed
    (`pytest -s`), and a bound of PROMPT_SECONDS is asserted."""
    times = sorted(
        (a.seconds, name) for name, a in scene.arrivals.items() if a.result.get("status") == "error"
    )
    assert times, "no error results"
    seconds = [t for t, _ in times]
    print(
        f"\n{len(times)} error results after their drop: "
        f"median {statistics.median(seconds):.3f}s, "
        f"90% {seconds[int(len(seconds) * 0.9)]:.3f}s, max {seconds[-1]:.3f}s "
        f"({times[-1][1]!r}); {sum(t <= 1 for t in seconds)} within 1 s"
    )
    lone = scene.arrivals[LONE.file]
    print(f"a lone error result (nothing else going on): {lone.seconds:.3f}s")
    assert lone.result["message"] == f"{LONE.file}: {LONE.message}"
    late = [(round(t, 2), name) for t, name in times if t > PROMPT_SECONDS]
    assert not late, (
        f"{len(late)} error results took over {PROMPT_SECONDS}s (jobs holding all "
        f"{len(BLOCKERS)} run slots sleep {BLOCKER_SLEEP}s): {late[:5]} ..."
    )


# -- `dropflow validate` on the same entries: the result files' messages -------------------


def test_validate_prints_the_messages_of_the_result_files(scene: Scene, tmp_path: Path) -> None:
    """Every catalog entry, made again in a folder no service watches, is checked by one
    `dropflow validate` run with the scene's config: each line is the message the entry's
    result file carries (its control characters escaped, so that a file name holding a
    newline is still one line), or says the file is valid where its job completed."""
    from watcher.jobs.messages import one_line

    folder = tmp_path / "check"
    folder.mkdir()
    names: list[str] = []
    for case in CATALOG:
        if case.expect == "none" or case.file not in scene.arrivals:
            continue
        path = folder / case.file
        try:
            if case.make is not None:
                case.make(scene.world, path)
            else:
                content = case.content(scene.world) if callable(case.content) else case.content
                path.write_bytes(content or b"")
        except pytest.skip.Exception:
            continue
        names.append(case.file)
    (folder / os.fsdecode(BAD_NAME)).write_bytes(VALID)
    names.append(os.fsdecode(BAD_NAME))
    config = str(scene.svc.root / "config.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "validate", "-c", config, "--", *names],
        cwd=folder,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
    )
    assert done.stderr == ""
    lines = done.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1, done.stdout[-2000:]
    for name, line in zip(names, lines, strict=False):
        result = scene.arrivals[name].result
        if result["status"] == "error":
            assert line == one_line(result["message"]), name
        else:
            assert line.startswith(one_line(name) + ": valid (timeout "), (name, line)
    assert done.returncode == 2

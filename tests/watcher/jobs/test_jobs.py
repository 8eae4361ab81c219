"""Job files, one case class per test: `parse_job`, `read_job_bytes` and `load_job` on the real
filesystem, with the exact message a person gets in the result file."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watcher.jobs.model import Job, JobError, JobLimits
from watcher.jobs.reading import MAX_DEPTH, MAX_NODES, _JobLoader, load_job, parse_job
from watcher.jobs.reading import read_job_bytes as read_capped

LIMITS = JobLimits()


def error_of(data: bytes, limits: JobLimits = LIMITS) -> str:
    with pytest.raises(JobError) as caught:
        parse_job(data, limits)
    return str(caught.value)


# -- tags that construct objects: refused before anything is built -------------------------


def _tag_cases(marker: Path) -> list[tuple[bytes, str]]:
    touch = f"['touch {marker}']".encode()
    refused = "is not allowed: job files hold plain values only"
    return [
        (
            b"!!python/object/apply:os.system " + touch + b"\n",
            f"YAML tag '!!python/object/apply:os.system' at line 1 {refused}",
        ),
        (
            b"timeout: !!python/object/apply:os.system " + touch + b"\n",
            f"YAML tag '!!python/object/apply:os.system' at line 1 {refused}",
        ),
        (
            b"timeout: 1\nsleep: !!python/object/new:subprocess.Popen [" + touch + b"]\n",
            f"YAML tag '!!python/object/new:subprocess.Popen' at line 2 {refused}",
        ),
        (
            b"name: !!python/name:os.system\n",
            f"YAML tag '!!python/name:os.system' at line 1 {refused}",
        ),
        (b"name: !!python/module:os\n", f"YAML tag '!!python/module:os' at line 1 {refused}"),
        (
            b"timeout: !<tag:yaml.org,2002:python/object/apply:os.system> " + touch + b"\n",
            f"YAML tag '!!python/object/apply:os.system' at line 1 {refused}",
        ),
        (
            b"%TAG !p! tag:yaml.org,2002:python/\n---\ntimeout: !p!object/apply:os.system "
            + touch
            + b"\n",
            f"YAML tag '!!python/object/apply:os.system' at line 3 {refused}",
        ),
        (b"timeout: !foo 3\n", f"YAML tag '!foo' at line 1 {refused}"),
        # Standard tags too: several crashed PyYAML's safe constructor (KeyError, IndexError,
        # AttributeError, TypeError) instead of giving a message.
        (b"timeout: !!bool abc\n", f"YAML tag '!!bool' at line 1 {refused}"),
        (b"timeout: !!int\n", f"YAML tag '!!int' at line 1 {refused}"),
        (b"timeout: !!timestamp abc\n", f"YAML tag '!!timestamp' at line 1 {refused}"),
        (b"sleep: !!set [1]\n", f"YAML tag '!!set' at line 1 {refused}"),
        (b"name: !!binary aGVsbG8=\n", f"YAML tag '!!binary' at line 1 {refused}"),
        (b"!!map {timeout: 1}\n", f"YAML tag '!!map' at line 1 {refused}"),
        (b"timeout: !!str 3\n", f"YAML tag '!!str' at line 1 {refused}"),
    ]


def test_object_tags_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for data, message in _tag_cases(marker):
        assert error_of(data) == message, data
    assert not marker.exists()
    # The non-specific tag `!` only makes a plain scalar text: harmless, allowed.
    assert parse_job(b"name: ! 123\n").name == "123"


# -- anchors, aliases, nesting, size of the document ---------------------------------------

BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

ANCHOR = "anchors and aliases are not allowed in job files"
DEEP = f"nested deeper than {MAX_DEPTH} levels; a job file is a flat mapping"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BILLION_LAUGHS, f"YAML anchor '&a' at line 1: {ANCHOR}"),
        (b"timeout: *t\n", "YAML alias '*t' at line 1: aliases are not allowed in job files"),
        (b"timeout: &t 1\n", f"YAML anchor '&t' at line 1: {ANCHOR}"),
        (b"base: &b {timeout: 1}\n<<: *b\n", f"YAML anchor '&b' at line 1: {ANCHOR}"),
        (b"[" * 5000 + b"]" * 5000, DEEP),
        (b"{a: " * 5000 + b"}" * 5000, DEEP),
        (b"[" * 30000, DEEP),
        (b"- " * 10000 + b"1\n", DEEP),
        ("".join(" " * i + "a:\n" for i in range(300)).encode(), DEEP),
        (
            b"sleep: [" + b"1, " * 5000 + b"1]\n",
            f"more than {MAX_NODES} values; a job file is a short mapping such as 'timeout: 2'",
        ),
        (
            b"".join(b"k%d: 1\n" % i for i in range(2000)),
            f"more than {MAX_NODES} values; a job file is a short mapping such as 'timeout: 2'",
        ),
    ],
    ids=[
        "billion-laughs",
        "undefined-alias",
        "lone-anchor",
        "merge-alias",
        "deep-flow-lists",
        "deep-flow-maps",
        "unclosed-brackets",
        "deep-block-lists",
        "deep-block-maps",
        "long-list",
        "many-keys",
    ],
)
def test_bombs_and_nesting_stop_early_with_a_message(
    data: bytes, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Early means after a bounded number of values, however large the file: counted, not
    # timed (a timing bound fails on a busy machine and belongs in a benchmark).
    composed = 0
    compose = _JobLoader.compose_node

    def counting(self: _JobLoader, parent: Any, index: Any) -> Any:
        nonlocal composed
        composed += 1
        return compose(self, parent, index)

    monkeypatch.setattr(_JobLoader, "compose_node", counting)
    assert error_of(data) == message
    assert composed <= MAX_NODES + 1


def test_nesting_at_the_limit_is_still_read() -> None:
    # The mapping, MAX_DEPTH - 2 lists and a number: the deepest a job file may be.
    lists = MAX_DEPTH - 2
    data = b"sleep: " + b"[" * lists + b"1" + b"]" * lists + b"\n"
    assert error_of(data).startswith("sleep: a range must be [min, max] with two numbers")
    assert error_of(b"sleep: [" + data[7:]) == DEEP


# -- timeout and sleep values --------------------------------------------------------------

T = "timeout: must be a number of seconds > 0, got"
S = "sleep: must be a number of seconds >= 0, got"
CAP = "seconds (the service's cap), got"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timeout: .nan", f"{T} NaN"),
        ("timeout: .NaN", f"{T} NaN"),
        ("timeout: .inf", f"timeout: must be at most 3600 {CAP} infinity"),
        ("timeout: -.inf", f"{T} -inf"),
        ("timeout: -1", f"{T} -1"),
        ("timeout: -0.0", f"{T} -0.0"),
        ("timeout: 0", f"{T} 0"),
        ("timeout: 1e300", f"timeout: must be at most 3600 {CAP} 1e+300"),
        ("timeout: 1e400", f"timeout: must be at most 3600 {CAP} infinity"),
        ("timeout: " + "9" * 100, f"timeout: must be at most 3600 {CAP} {'9' * 18}...{'9' * 19}"),
        ("timeout: " + "9" * 5000, "a number with more than 4300 digits, which cannot be read"),
        ("timeout: ten", f"{T} 'ten'"),
        ("timeout: '3'", f"{T} '3'"),
        ("timeout: 10s", f"{T} '10s'"),
        ("timeout: true", f"{T} true"),
        ("timeout: yes", f"{T} true"),
        ("timeout: [1, 2]", f"{T} a list [1, 2]"),
        ("timeout: {seconds: 3}", f"{T} a mapping {{'seconds': 3}}"),
        ("timeout:", f"{T} null (an empty value)"),
        ("timeout: ~", f"{T} null (an empty value)"),
        ("timeout: 2001-12-14", f"{T} a date 2001-12-14"),
        ("timeout: 2001-13-45", "a value that cannot be read (month must be in 1..12)"),
        ("sleep: .nan", f"{S} NaN"),
        ("sleep: .inf", f"sleep: must be at most 3600 {CAP} infinity"),
        ("sleep: -0.5", f"{S} -0.5"),
        ("sleep: 1e300", f"sleep: must be at most 3600 {CAP} 1e+300"),
        ("sleep: fast", f"{S} 'fast'"),
        ("sleep: false", f"{S} false"),
        ("sleep: null", f"{S} null (an empty value)"),
        ("sleep: {min: 1, max: 2}", f"{S} a mapping {{'max': 2, 'min': 1}}"),
        ("sleep: 1-3", f"{S} '1-3'"),
        ("timeout: ten\nsleep: -1", f"{T} 'ten'; {S} -1"),
    ],
)
def test_timeout_and_sleep_values(text: str, message: str) -> None:
    assert error_of(text.encode() + b"\n") == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sleep: 0", 0.0),
        ("sleep: 0.25", 0.25),
        ("sleep: 1e3", 1000.0),
        ("sleep: [0, 0]", (0.0, 0.0)),
        ("sleep: [1, 2.5]", (1.0, 2.5)),
        ("timeout: 3600\nsleep: 3600", 3600.0),
    ],
)
def test_valid_values(text: str, expected: float | tuple[float, float]) -> None:
    assert parse_job(text.encode()).sleep == expected


RANGE = "sleep: a range must be [min, max] with two numbers, got"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sleep: [3, 1]", "sleep: the range [3, 1] is reversed; write [min, max]"),
        ("sleep: [0.5, 0.25]", "sleep: the range [0.5, 0.25] is reversed; write [min, max]"),
        ("sleep: []", f"{RANGE} a list []"),
        ("sleep: [1]", f"{RANGE} a list [1]"),
        ("sleep: [1, 2, 3]", f"{RANGE} a list [1, 2, 3]"),
        ("sleep: [.nan, 1]", "sleep: min: must be a number of seconds >= 0, got NaN"),
        ("sleep: [1, .inf]", f"sleep: max: must be at most 3600 {CAP} infinity"),
        ("sleep: [-1, 2]", "sleep: min: must be a number of seconds >= 0, got -1"),
        ("sleep: [a, 2]", "sleep: min: must be a number of seconds >= 0, got 'a'"),
        (
            "sleep: [1, null]",
            "sleep: max: must be a number of seconds >= 0, got null (an empty value)",
        ),
        ("sleep: [[1], 2]", "sleep: min: must be a number of seconds >= 0, got a list [1]"),
        ("sleep: [true, 2]", "sleep: min: must be a number of seconds >= 0, got true"),
        (
            "sleep: [1, 2",
            "not valid YAML at line 2: expected ',' or ']', but got '<stream end>' "
            "while parsing a flow sequence",
        ),
        (
            "sleep: [1,, 2]",
            "not valid YAML at line 1: expected the node content, but found ',' "
            "while parsing a flow node",
        ),
        ("sleep: 1, 2", f"{S} '1, 2'"),
    ],
)
def test_reversed_and_malformed_sleep_ranges(text: str, message: str) -> None:
    assert error_of(text.encode() + b"\n") == message


def test_caps_come_from_the_limits() -> None:
    limits = JobLimits(max_timeout=60, max_sleep=30)
    assert error_of(b"timeout: 61\n", limits) == f"timeout: must be at most 60 {CAP} 61"
    assert error_of(b"sleep: 30.5\n", limits) == f"sleep: must be at most 30 {CAP} 30.5"
    assert error_of(b"sleep: [0, 31]\n", limits) == f"sleep: max: must be at most 30 {CAP} 31"
    job = parse_job(b"timeout: 60\nsleep: [30, 30]\n", limits)
    assert (job.timeout, job.sleep) == (60.0, (30.0, 30.0))


# -- the shape of the document -------------------------------------------------------------

DOCS = "several YAML documents; a job file holds exactly one mapping"
MAPPING = "not a YAML mapping of keys to values (such as 'timeout: 2'), got"
EMPTY = "empty file; a job file is a YAML mapping such as 'timeout: 2'"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"timout: 3\n", "unknown key 'timout' (did you mean 'timeout'?)"),
        (b"Sleep: 3\n", "unknown key 'Sleep' (did you mean 'sleep'?)"),
        (b"timeout: 1\ncolour: red\n", "unknown key 'colour'"),
        (
            b"".join(b"key%d: 1\n" % i for i in range(8)),
            "unknown key 'key0'; unknown key 'key1'; unknown key 'key2'; unknown key 'key3'; "
            "unknown key 'key4'; and 3 more problems",
        ),
        (b"- timeout: 1\n", f"{MAPPING} a list [{{'timeout': 1}}]"),
        (b"hello\n", f"{MAPPING} 'hello'"),
        (b"42\n", f"{MAPPING} 42"),
        (b"", EMPTY),
        (b"\n\n   \n", EMPTY),
        (b"# just a comment\n# and another\n", EMPTY),
        (b"---\n", EMPTY),
        (b"~\n", EMPTY),
        (b"timeout: 1\n---\ntimeout: 2\n", DOCS),
        (b"timeout: 1\n---\n", DOCS),
        (b"---\n...\n---\n", DOCS),
        (b"timeout: 1\ntimeout: 2\n", "the key 'timeout' appears twice (line 2)"),
        (b"timeout: 1\n'timeout': 2\n", "the key 'timeout' appears twice (line 2)"),
        (b"1: 2\n", "a key that is not text: 1"),
        (b"~: 2\n", "a key that is not text: null (an empty value)"),
        (b"2001-01-01: 2\n", "a key that is not text: a date 2001-01-01"),
        (b"[1]: 2\n", "a list used as a key (line 1); keys are names such as 'timeout'"),
        (b"? {a: 1}\n: 2\n", "a mapping used as a key (line 1); keys are names such as 'timeout'"),
        (b"<<: {timeout: 1}\n", "unknown key '<<'"),
        (b"timeout: =\n", "timeout: must be a number of seconds > 0, got '='"),
        (b"timeout:\t1\n", "a tab at line 1, where YAML allows only spaces"),
        (b"timeout: 1\n\tsleep: 1\n", "a tab at line 2, where YAML allows only spaces"),
        (b"name: x\n  y: z\n", "not valid YAML at line 2: mapping values are not allowed here"),
    ],
)
def test_document_shape(data: bytes, message: str) -> None:
    assert error_of(data) == message


def test_valid_documents_and_defaults() -> None:
    limits = JobLimits(default_timeout=7, default_sleep=(0.5, 1.5))
    assert parse_job(b"{}\n", limits) == Job(timeout=7, sleep=(0.5, 1.5), name=None)
    assert parse_job(b"---\ntimeout: 1\n...\n").timeout == 1.0
    assert parse_job(b"%YAML 1.1\n---\ntimeout: 1\n").timeout == 1.0
    assert parse_job(b"\xef\xbb\xbftimeout: 1\n").timeout == 1.0  # a UTF-8 BOM is fine
    job = parse_job("name: dépôt 日本 🚀\ntimeout: 5\nsleep: [0, 1]\n".encode())
    assert job == Job(timeout=5, sleep=(0, 1), name="dépôt 日本 🚀")
    # A name is only a label: a path in it goes nowhere.
    assert parse_job(b"name: ../../etc/passwd\n").name == "../../etc/passwd"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [1]", "name: must be text, got a list [1]"),
        ("name: ''", "name: must be printable text on one line, got ''"),
        ('name: "a\\nb"', "name: must be printable text on one line, got 'a\\nb'"),
        ('name: "a\\u202eb"', "name: must be printable text on one line, got 'a\\u202eb'"),
        ('name: "\\ud800"', "name: must be printable text on one line, got '\\ud800'"),
        ("name: " + "x" * 101, "name: must be at most 100 characters, got 101"),
    ],
)
def test_name_values(text: str, message: str) -> None:
    assert error_of(text.encode() + b"\n") == message


# -- bytes that are not text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"timeout: \xff\n", "not valid UTF-8 text (bad byte at offset 9)"),
        (b"name: \xc0\xaf\n", "not valid UTF-8 text (bad byte at offset 6)"),
        (b"name: \xed\xa0\x80\n", "not valid UTF-8 text (bad byte at offset 6)"),
        (b"name: \xe6\x97\n", "not valid UTF-8 text (bad byte at offset 6)"),
        ("timeout: 1\n".encode("utf-16"), "not valid UTF-8 text (bad byte at offset 0)"),
        (b"\x7fELF\x02\x01\x01\x00", "a NUL byte at offset 7: not a text file"),
        (b"timeout: 1\x00\n", "a NUL byte at offset 10: not a text file"),
        (b"\x00" * 100, "a NUL byte at offset 0: not a text file"),
        (
            b"timeout: 1\nname: a\x07b\n",
            "the character U+0007 at line 2 is a control or non-character code point, which "
            "YAML does not allow; a job file is plain text",
        ),
        (
            "name: \ufffe\n".encode(),
            "the character U+FFFE at line 1 is a control or non-character code point, which "
            "YAML does not allow; a job file is plain text",
        ),
    ],
    ids=[
        "bad-byte",
        "overlong",
        "surrogate",
        "truncated",
        "utf-16",
        "elf-header",
        "nul",
        "all-nul",
        "bell",
        "non-character",
    ],
)
def test_bytes_that_are_not_text(data: bytes, message: str) -> None:
    assert error_of(data) == message


# -- size ----------------------------------------------------------------------------------


def test_over_the_size_cap() -> None:
    limits = JobLimits(max_bytes=64)
    fits = b"timeout: 1\n" + b"#" * (64 - 12) + b"\n"
    assert len(fits) == 64 and parse_job(fits, limits).timeout == 1.0
    assert error_of(fits + b"\n", limits) == "larger than the 64-byte limit for job files"


def test_only_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (1024 * 1024))
    assert len(read_capped(path, 100)) == 101
    sparse = tmp_path / "sparse.yaml"
    sparse.touch()
    os.truncate(sparse, 1 << 40)  # 1 TiB of holes: reading it all would never end
    started = time.perf_counter()
    with pytest.raises(JobError, match=r"^larger than the 65536-byte limit for job files$"):
        load_job(sparse)
    assert time.perf_counter() - started < 1


# -- what is in the inbox: only a plain regular file is read -------------------------------

SYMLINK = "a symbolic link, not a job file; put the job file itself in the inbox"
SECRET = b"timeout: 1\nname: TOP-SECRET-7f3a\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.yaml"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def test_symlinks_are_never_followed(inbox: Path, secret: Path) -> None:
    targets = {
        "absolute.yaml": secret,
        "relative.yaml": Path("../outside/secret.yaml"),
        "dangling.yaml": inbox / "nowhere",
        "to-dir.yaml": secret.parent,
        "loop.yaml": Path("loop.yaml"),
        "etc.yaml": Path("/etc/passwd"),
    }
    for name, target in targets.items():
        (inbox / name).symlink_to(target)
        with pytest.raises(JobError) as caught:
            load_job(inbox / name)
        assert str(caught.value) == SYMLINK, name


def test_a_fifo_never_blocks(inbox: Path) -> None:
    fifo = inbox / "pipe.yaml"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=_capture, args=(fifo, outcome), daemon=True)
    reader.start()
    reader.join(timeout=5)
    try:
        assert not reader.is_alive(), "reading a FIFO blocked"
    finally:
        _unblock(fifo)
    assert [str(e) for e in outcome] == ["a named pipe (FIFO), not a job file"]


def _capture(path: Path, outcome: list[BaseException]) -> None:
    try:
        load_job(path)
    except BaseException as exc:
        outcome.append(exc)


def _unblock(fifo: Path) -> None:
    # If a reader is stuck on the FIFO, a writer that opens and closes it lets it go.
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_directories_sockets_hard_links_and_vanished_files(
    inbox: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (inbox / "dir.yaml").mkdir()
    (inbox / "dir.yaml" / "timeout.yaml").write_text("timeout: 1\n")
    os.link(secret, inbox / "hard.yaml")
    monkeypatch.chdir(inbox)  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.yaml")
        expected = {
            "dir.yaml": "a directory, not a job file",
            "hard.yaml": "a hard link to another file; put a copy of the job in the inbox",
            "sock.yaml": "a socket, not a job file",
            "gone.yaml": "the file vanished before it could be read",
        }
        for name, message in expected.items():
            with pytest.raises(JobError) as caught:
                load_job(inbox / name)
            assert str(caught.value) == message, name
            assert "TOP-SECRET" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file(inbox: Path) -> None:
    path = inbox / "locked.yaml"
    path.write_text("timeout: 1\n")
    path.chmod(0)
    with pytest.raises(JobError, match="permission denied"):
        load_job(path)


# -- an entry swapped between the check and the read ---------------------------------------


@contextlib.contextmanager
def _lstat_sees(decoy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The boundary: `read_job_bytes` checks the entry with `os.lstat`, then opens it. Make
    the check see a plain file, as it would have an instant before the swap."""
    real = os.lstat
    with monkeypatch.context() as patch:
        patch.setattr(os, "lstat", lambda path, *a, **k: real(decoy))
        yield


@pytest.mark.parametrize("swap", ["symlink", "fifo", "directory", "hard link", "vanished"])
def test_swapped_after_the_check(
    swap: str, inbox: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = inbox / ".decoy"
    decoy.write_text("timeout: 1\n")
    path = inbox / "job.yaml"
    if swap == "symlink":
        path.symlink_to(secret)
    elif swap == "fifo":
        os.mkfifo(path)
    elif swap == "directory":
        path.mkdir()
    elif swap == "hard link":
        os.link(secret, path)
    expected = {
        "symlink": SYMLINK,
        "fifo": "a named pipe (FIFO), not a job file",
        "directory": "a directory, not a job file",
        "hard link": "a hard link to another file; put a copy of the job in the inbox",
        "vanished": "the file vanished before it could be read",
    }[swap]
    started = time.perf_counter()
    try:
        with _lstat_sees(decoy, monkeypatch), pytest.raises(JobError) as caught:
            read_capped(path, 1000)
    finally:
        if swap == "fifo":
            _unblock(path)
    assert str(caught.value) == expected
    assert time.perf_counter() - started < 1


def test_a_real_race_never_returns_what_a_link_points_at(inbox: Path, secret: Path) -> None:
    """A writer keeps swapping the entry (file, symlink to a secret, FIFO, nothing) while it
    is read: each read gives the job's own bytes or a JobError, never the secret."""
    path = inbox / "flip.yaml"
    mine = b"timeout: 1\n"
    path.write_bytes(mine)
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tmp = inbox / f".tmp{i}"
            kind = i % 4
            if kind == 0:
                tmp.write_bytes(mine)
            elif kind == 1:
                tmp.symlink_to(secret)
            elif kind == 2:
                os.mkfifo(tmp)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            os.replace(tmp, path)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 0.5
    try:
        while time.monotonic() < deadline:
            try:
                data = read_capped(path, 1000)
            except JobError as exc:
                seen[str(exc)] = seen.get(str(exc), 0) + 1
            else:
                assert data == mine
                seen["read"] = seen.get("read", 0) + 1
    finally:
        stop.set()
        thread.join(timeout=5)
    assert set(seen) <= {
        "read",
        SYMLINK,
        "a named pipe (FIFO), not a job file",
        "the file vanished before it could be read",
    }, seen
    assert len(seen) >= 2, seen


def test_a_regular_file_is_read_whole(inbox: Path) -> None:
    """A file longer than one read (64 KiB) but within the cap comes back whole: the keys
    after the first read's end are there, not cut off or reported missing."""
    path = inbox / "ok.yaml"
    padding = b"#" * 100 + b"\n"
    body = b"timeout: 5\n" + padding * 900 + b"sleep: [0, 1]\n" + padding * 500 + b"name: fine\n"
    assert 2 * 65536 < len(body) < 3 * 65536
    path.write_bytes(body)
    assert read_capped(path, len(body)) == body
    limits = JobLimits(max_bytes=len(body))
    assert load_job(path, limits) == Job(timeout=5, sleep=(0, 1), name="fine")


_FLOWS = JobLimits(flows=("wait", "csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flow: nope\n", "flow: no flow named 'nope' is registered here; registered: wait, csv"),
        ("flow: cvs\n", "flow: no flow named 'cvs' is registered here (did you mean 'csv'?)"),
        ("flow: [csv]\n", "flow: must be the name of a registered flow, got a list ['csv']"),
        ("flow: os.system\n", "flow: must be the name of a registered flow, got 'os.system'"),
        (
            "parameters: {sleep: 1}\n",
            "parameters: the wait flow takes 'timeout', 'sleep' and 'name' at the top level",
        ),
        ("flow: csv\nsleep: 1\n", "sleep: only wait jobs have it; give flow 'csv' its arguments"),
        ("flow: csv\nparameters: [1]\n", "parameters: must be a mapping of parameter names"),
        ("flow: csv\nparameters: {1: x}\n", "parameters: a parameter name must be text, got 1"),
    ],
)
def test_flow_and_parameters(text: str, message: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job(text.encode(), _FLOWS)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_job_for_another_flow() -> None:
    job = parse_job(b"flow: csv\nparameters: {path: a.csv}\ntimeout: 9\nname: x\n", _FLOWS)
    assert (job.flow, job.parameters, job.timeout, job.name) == ("csv", {"path": "a.csv"}, 9, "x")
    assert "sleep" not in job.model_fields_set
    wait = parse_job(b"timeout: 1\n", _FLOWS)
    assert (wait.flow, wait.parameters) == ("wait", None)

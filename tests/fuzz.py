"""Fuzz the job parser: `python -m tests.fuzz` (or `make fuzz`).

Feeds `parse_job` at least 100,000 generated inputs and checks that each one gives either a
valid `Job` or a `JobError` with a short, one-line message; anything else (another exception,
a job outside its limits, a slow parse) is counted and shown. The inputs mix four sources:

- mutations of a seed corpus of valid and hostile job files (bit flips, spliced fragments,
  repeated chunks, truncation, ...);
- YAML-ish text glued from fragments (keys, numbers in every YAML spelling, tags, anchors,
  aliases, brackets, directives, odd characters);
- generated job mappings whose values come from the same fragments, nested a little;
- plain random bytes.

A fixed seed makes a run repeatable; the exit status is 1 if anything went wrong.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from watcher import defaults
from watcher.jobs.model import Job, JobError, JobLimits
from watcher.jobs.reading import parse_job

__all__ = [
    "FRAGMENTS",
    "SEEDS",
    "Report",
    "check",
    "generate",
    "main",
    "random_limits",
]

MAX_MESSAGE_CHARS = 1000
"""A message longer than this is not one a person reads: counted as a bad result."""

SLOW_SECONDS = 0.5
"""A parse slower than this would eat the 1 s budget of an error result: counted."""

SEEDS: tuple[bytes, ...] = (
    b"timeout: 2\nsleep: 1\n",
    b"timeout: 5\nsleep: [0, 3]\nname: a job\n",
    b"{timeout: 1, sleep: 0.5, name: x}\n",
    b"---\ntimeout: 1e3\nsleep: 0\n...\n",
    b"# a comment\ntimeout: 3600\n",
    b"{}\n",
    b'name: "d\\u00e9p\\xf4t"\n',
    "name: 日本 🚀\n".encode(),
    b"\xef\xbb\xbftimeout: 1\n",
    b"!!python/object/apply:os.system ['true']\n",
    b"timeout: !!python/object/new:subprocess.Popen [['true']]\n",
    b"%TAG !p! tag:yaml.org,2002:python/\n---\ntimeout: !p!name:os.system\n",
    b"a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n",
    b"base: &b {timeout: 1}\n<<: *b\n",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    b"timeout: .nan\nsleep: -.inf\n",
    b"timeout: 1e400\nsleep: [3, 1]\n",
    b"sleep: [1, 2, 3]\ntimeout: [1]\nname: [x]\n",
    b"timeout: ten\nsleep: yes\nname: ~\n",
    b"timout: 3\nSleep: 1\n",
    b"- 1\n- 2\n",
    b"timeout: 1\n---\ntimeout: 2\n",
    b"timeout: 1\ntimeout: 2\n",
    b"? [1]\n: 2\n",
    b"timeout: !!bool x\nsleep: !!timestamp y\n",
    b"timeout: 2001-12-14\nsleep: 1:30\n",
    b"timeout: 0x10\nsleep: 017\n",
    b"name: |\n  two\n  lines\n",
    b"timeout: \xff\n",
    b"timeout: 1\x00\n",
    b"name: a\x07b\n",
)
"""Valid and hostile job files that mutations start from."""

FRAGMENTS: tuple[str, ...] = (
    # keys and structure
    "timeout",
    "sleep",
    "name",
    "timout",
    "Timeout",
    "<<",
    "=",
    ": ",
    ":",
    "\n",
    "\n  ",
    "  ",
    "\t",
    ", ",
    "[",
    "]",
    "{",
    "}",
    "- ",
    "? ",
    "---\n",
    "...\n",
    "# c\n",
    "'",
    '"',
    "|\n  ",
    ">-\n  ",
    "%YAML 1.1\n",
    "%TAG !e! tag:example.com,2000:\n",
    # anchors, aliases, tags
    "&a ",
    "*a",
    "&b ",
    "*b",
    "*undefined",
    "!!python/object/apply:os.system ",
    "!!python/object/new:os.system ",
    "!!python/name:os.system",
    "!!python/module:os",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!pairs ",
    "!!timestamp ",
    "!!bool ",
    "!!int ",
    "!!float ",
    "!!str ",
    "!!null ",
    "!!merge ",
    "!!map ",
    "!!seq ",
    "!foo ",
    "! ",
    "!e!x ",
    # numbers, in every spelling YAML 1.1 knows and some it does not
    "0",
    "1",
    "-1",
    "-0.0",
    "2.5",
    "1e3",
    "1E-3",
    "1e300",
    "1e400",
    "-1e400",
    ".inf",
    "-.Inf",
    "+.INF",
    ".nan",
    ".NaN",
    "nan",
    "inf",
    "0x1F",
    "0x",
    "0o17",
    "017",
    "0b101",
    "1:30",
    "190:20:30.15",
    "1_000",
    "1__0",
    "1.",
    ".5",
    "+1",
    "1e",
    "9" * 400,
    "9" * 4400,
    "3601",
    "3600",
    "2001-12-14",
    "2001-13-45",
    "2001-12-14T21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5",
    # other scalars
    "yes",
    "no",
    "on",
    "Off",
    "true",
    "False",
    "~",
    "null",
    "ten",
    "'3'",
    '"\\x00"',
    '"\\ud800"',
    '"\\u202e"',
    '"\\n"',
    "é",
    "日本",
    "🚀",
    "\x07",
    "\x7f",
    "\ufeff",
    "\ufffe",
    "\u2028",
    "\x85",
    "\r\n",
    "\r",
    "\ud800",
)
"""Pieces of YAML-ish text; generated inputs are glued from these."""

_BYTE_FRAGMENTS: tuple[bytes, ...] = (
    b"\xff",
    b"\x00",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"\xe6\x97",
    b"\xfe\xff",
)

_KEYS = ("timeout", "sleep", "name", "timeout", "sleep", "timout", "<<", "~", "1", "[1]", "'x'")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _fragment(rng: random.Random) -> bytes:
    if rng.random() < 0.02:
        return rng.choice(_BYTE_FRAGMENTS)
    return _encode(rng.choice(FRAGMENTS))


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, 8, 30, 100, 300)))


def _glued(rng: random.Random) -> bytes:
    return b"".join(_fragment(rng) for _ in range(rng.randint(1, 30)))


def _scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(FRAGMENTS[FRAGMENTS.index("0") :])
    if roll < 0.6:
        return rng.choice(
            (
                repr(rng.uniform(-10, 4000)),
                repr(rng.expovariate(0.01)),
                f"{rng.uniform(-9, 9):.{rng.randint(0, 3)}f}e{rng.randint(-400, 400)}",
            )
        )
    if roll < 0.75:
        return str(rng.randint(-(10**6), 10**6))
    if roll < 0.85:
        return "".join(rng.choice("ab 日🚀\\\"'#:-") for _ in range(rng.randint(0, 12)))
    return rng.choice(("'", '"')) + rng.choice(FRAGMENTS) + rng.choice(("'", '"', ""))


def _value(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.55:
        return _scalar(rng)
    if roll < 0.75:
        items = ", ".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 4)))
        return f"[{items}]"
    if roll < 0.85:
        items = ", ".join(
            f"{rng.choice(_KEYS)}: {_value(rng, depth + 1)}" for _ in range(rng.randint(0, 3))
        )
        return f"{{{items}}}"
    prefix = rng.choice(("&a ", "!!python/object/apply:os.system ", "!!int ", "!foo ", "! "))
    return prefix + _value(rng, depth + 1) if rng.random() < 0.8 else "*a"


def _mapping(rng: random.Random) -> bytes:
    lines = [f"{rng.choice(_KEYS)}: {_value(rng)}" for _ in range(rng.randint(0, 5))]
    head = rng.choice(("", "", "---\n", "%YAML 1.1\n---\n", "# job\n", "\ufeff"))
    tail = rng.choice(("\n", "", "\n...\n", "\n---\n"))
    return _encode(head + "\n".join(lines) + tail)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        at = rng.randint(0, len(buf))
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(b"\x00\t\n\r #&*!:-[]{}'\"\\\xff\x85~|>%?")
        elif op == 2:
            buf[at:at] = _fragment(rng)
        elif op == 3 and buf:
            end = min(len(buf), at + rng.randint(1, 16))
            del buf[at:end]
        elif op == 4 and buf:
            end = min(len(buf), at + rng.randint(1, 8))
            buf[at:at] = bytes(buf[at:end]) * rng.choice((2, 3, 50, 3000))
        elif op == 5:
            other = rng.choice(SEEDS)
            buf = buf[:at] + other[rng.randint(0, len(other)) :]
        elif op == 6:
            del buf[at:]
        else:
            buf[at:at] = _encode(f"{rng.choice(_KEYS)}: {_value(rng)}\n")
    return bytes(buf)


def _job(rng: random.Random) -> bytes:
    """A mapping of the real keys, each once, with values that are mostly numbers."""
    keys = rng.sample(("timeout", "sleep", "name"), rng.randint(0, 3))
    lines = []
    for key in keys:
        if key == "sleep" and rng.random() < 0.4:
            value = f"[{_number(rng)}, {_number(rng)}]"
        elif key == "name" and rng.random() < 0.7:
            value = _scalar(rng)
        else:
            value = _number(rng) if rng.random() < 0.8 else _value(rng)
        lines.append(f"{key}: {value}")
    if rng.random() < 0.5:
        return _encode("{" + ", ".join(lines) + "}\n")
    return _encode("\n".join(lines) + "\n")


def _number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return str(rng.randint(0, 4000))
    if roll < 0.6:
        return f"{rng.uniform(0, 4000):.{rng.randint(0, 4)}f}"
    if roll < 0.7:
        return f"{rng.uniform(0, 9):.2f}e{rng.randint(-3, 4)}"
    return _scalar(rng)


def generate(rng: random.Random) -> bytes:
    """One fuzz input."""
    roll = rng.random()
    if roll < 0.35:
        return _mutate(rng, rng.choice(SEEDS))
    if roll < 0.55:
        return _glued(rng)
    if roll < 0.75:
        return _mapping(rng) if rng.random() < 0.7 else _mutate(rng, _mapping(rng))
    if roll < 0.97:
        return _job(rng) if rng.random() < 0.7 else _mutate(rng, _job(rng))
    return _random_bytes(rng)


def random_limits(rng: random.Random) -> JobLimits:
    """The default limits most of the time, else small random caps (as a config may set)."""
    if rng.random() < 0.8:
        return JobLimits()
    max_timeout = rng.choice((0.5, 1.0, 60.0, 3600.0, 1e9))
    return JobLimits(
        max_timeout=max_timeout,
        max_sleep=rng.choice((0.0, 1.0, 30.0, 3600.0)),
        max_bytes=rng.choice((64, 100, 1024, defaults.MAX_JOB_BYTES)),
        default_timeout=min(defaults.JOB_TIMEOUT, max_timeout),
        default_sleep=0.0,
    )


def job_problems(job: Job, limits: JobLimits) -> list[str]:
    """Ways a parsed job breaks its own rules (none, for a correct parser)."""
    problems = []
    if not (math.isfinite(job.timeout) and 0 < job.timeout <= limits.max_timeout):
        problems.append(f"timeout {job.timeout!r} out of (0, {limits.max_timeout}]")
    sleeps = job.sleep if isinstance(job.sleep, tuple) else (job.sleep, job.sleep)
    low, high = sleeps
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high <= limits.max_sleep):
        problems.append(f"sleep {job.sleep!r} out of [0, {limits.max_sleep}]")
    if job.name is not None and not (
        0 < len(job.name) <= defaults.MAX_NAME_CHARS and job.name.isprintable()
    ):
        problems.append(f"name {job.name!r} not printable or too long")
    return problems


def message_problems(message: str) -> list[str]:
    """Ways an error message fails a person (none, for a good one)."""
    problems = []
    if not message.strip():
        problems.append("empty message")
    if "\n" in message or "\r" in message:
        problems.append("message spans lines")
    if len(message) > MAX_MESSAGE_CHARS:
        problems.append(f"message of {len(message)} characters")
    if "Traceback" in message or "object at 0x" in message:
        problems.append("message shows Python internals")
    return problems


@dataclass
class Report:
    """What a batch of examples did."""

    examples: int = 0
    jobs: int = 0
    errors: int = 0
    unhandled: int = 0
    bad: int = 0
    slow: int = 0
    slowest: float = 0.0
    slowest_input: bytes = b""
    longest_message: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, bytes]] = field(default_factory=list)

    def fail(self, what: str, data: bytes) -> None:
        if len(self.failures) < 20:
            self.failures.append((what, data))


def check(data: bytes, limits: JobLimits, report: Report) -> None:
    """Parse one input and record what happened."""
    report.examples += 1
    started = time.perf_counter()
    try:
        job = parse_job(data, limits)
    except JobError as exc:
        report.errors += 1
        message = str(exc)
        report.longest_message = max(report.longest_message, len(message))
        report.kinds[message.split(":")[0].split(" at line")[0][:40]] += 1
        problems = message_problems(message)
        if problems:
            report.bad += 1
            report.fail(f"{'; '.join(problems)}: {message[:200]!r}", data)
    except Exception as exc:
        report.unhandled += 1
        report.fail(f"unhandled {type(exc).__name__}: {str(exc)[:200]}", data)
    else:
        report.jobs += 1
        problems = job_problems(job, limits)
        if problems:
            report.bad += 1
            report.fail("; ".join(problems), data)
    elapsed = time.perf_counter() - started
    if elapsed > report.slowest:
        report.slowest, report.slowest_input = elapsed, data
    if elapsed > SLOW_SECONDS:
        report.slow += 1
        report.fail(f"slow: {elapsed:.2f}s", data)


def run(
    examples: int,
    seed: int,
    max_seconds: float | None = None,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Run `examples` inputs from `seed` (stopping early after `max_seconds`, if given)."""
    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    for i in range(examples):
        check(generate(rng), random_limits(rng), report)
        if progress is not None and (i + 1) % 10_000 == 0:
            progress(report)
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=100_000, help="default: 100000")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop early after this")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    started = time.monotonic()
    print(f"fuzzing parse_job with {args.examples} examples, seed {seed}", flush=True)

    def progress(report: Report) -> None:
        print(
            f"  {report.examples} examples, {report.unhandled} unhandled, "
            f"{time.monotonic() - started:.0f}s",
            flush=True,
        )

    report = run(args.examples, seed, args.max_seconds, progress)
    wall = time.monotonic() - started
    print("most common messages:")
    for kind, count in report.kinds.most_common(20):
        print(f"  {count:7d}  {kind}")
    print(f"slowest input ({len(report.slowest_input)} bytes): {report.slowest_input[:200]!r}")
    for what, data in report.failures:
        print(f"FAILURE {what}\n  input: {data[:300]!r}")
    print(
        f"fuzz: {report.examples} examples run in {wall:.1f}s (seed {seed}): "
        f"{report.jobs} valid jobs, {report.errors} JobErrors, "
        f"{report.unhandled} unhandled exceptions, {report.bad} bad results, "
        f"{report.slow} slower than {SLOW_SECONDS}s (slowest {report.slowest * 1000:.0f} ms), "
        f"longest message {report.longest_message} characters"
    )
    return 1 if report.unhandled or report.bad or report.slow else 0


if __name__ == "__main__":
    sys.exit(main())

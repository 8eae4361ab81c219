"""`bench/RESULTS.md` holds one section per benchmark suite, each rewritten by its own run."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["command_line", "publish", "results_path", "write_section"]

_BENCH = Path(__file__).resolve().parent


def results_path(partial: bool) -> Path:
    """Where a suite writes: `bench/RESULTS.md`, or for a partial run (`--quick`) a file of
    its own, so a trial never overwrites the recorded figures."""
    return _BENCH / "out" / "RESULTS-partial.md" if partial else _BENCH / "RESULTS.md"


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command a suite was run with, for its report."""
    return " ".join([prog, *(argv if argv is not None else sys.argv[1:])])


def write_section(path: Path, key: str, text: str) -> None:
    """Put `text` in `path` between the markers of section `key`, keeping the other sections.

    A file without the section gets it appended; a missing file is created.
    """
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def publish(path: Path, key: str, text: str) -> None:
    """Write section `key` of `path` (see `write_section`) and print it, as every suite ends."""
    write_section(path, key, text)
    print(text)
    print(f"written to {path}")

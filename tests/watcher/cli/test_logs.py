"""The service's log formats: every record is one line, whatever a file name holds."""

from __future__ import annotations

import json
import logging
import re
import sys

from watcher.cli.logs import _formatter

# A file name may hold any byte but "/" and NUL: a forged line after a newline, a carriage
# return, a tab, an escape sequence, C1 controls, Unicode line breaks, and (a name that is not
# UTF-8, as os.fsdecode gives it) a lone surrogate.
NAME = (
    "a.yaml\n12:00:00.000 | INFO    | watcher.service.loop - job finished: x completed"
    "\r\t\x1b[2J\x7f\x85\x9b\u2028\u2029\udcff.yaml"
)
ESCAPED = (
    "a.yaml\\n12:00:00.000 | INFO    | watcher.service.loop - job finished: x completed"
    "\\r\\t\\x1b[2J\\x7f\\x85\\x9b\\u2028\\u2029\\udcff.yaml"
)
PREFIX = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| INFO    \| watcher\.service\.loop - ")


def _record(exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise OSError("the disk is gone")
        except OSError:
            info = sys.exc_info()
    return logging.LogRecord(
        "watcher.service.loop", logging.INFO, __file__, 1, "job started: %s", (NAME,), info
    )


def test_text_a_message_is_one_line_with_its_controls_escaped() -> None:
    record = _record()
    line = _formatter("text").format(record)
    assert line.splitlines() == [line]
    assert PREFIX.match(line) and line.endswith(f"job started: {ESCAPED}")
    # The record itself is left as it came, for Prefect's other handlers.
    assert (record.msg, record.args) == ("job started: %s", (NAME,))


def test_text_a_traceback_keeps_its_own_lines_after_the_one_line_message() -> None:
    record = _record(exc_info=True)
    first, *rest = _formatter("text").format(record).split("\n")
    assert PREFIX.match(first) and first.endswith(ESCAPED)
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "OSError: the disk is gone"
    assert record.exc_text is None


def test_json_the_message_is_the_same_escaped_text() -> None:
    line = _formatter("json").format(_record(exc_info=True))
    assert line.splitlines() == [line]
    data = json.loads(line)
    assert data["message"] == f"job started: {ESCAPED}"
    assert data["exc_info"].endswith("OSError: the disk is gone")
    # No lone surrogate reaches a log shipper, which may refuse the whole line for one.
    line.encode("ascii")
    data["message"].encode("utf-8")

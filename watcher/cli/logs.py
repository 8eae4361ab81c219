"""dropflow's log lines: configured once, here, for the service and Prefect's console alike."""

from __future__ import annotations

import logging
import sys

from watcher.jobs.messages import one_line

__all__ = ["fatal", "route_prefect_console", "setup_logging"]

logger = logging.getLogger("watcher")


def _safe_record(record: logging.LogRecord, formatter: logging.Formatter) -> logging.LogRecord:
    """A copy of `record` whose message is one line: a job's file name may hold a newline, and
    written raw it would forge a log line of its own. Control characters (and the surrogates
    of a name that is not UTF-8) are escaped; the traceback keeps its own lines, each escaped.
    The record itself is left as it is for Prefect's other handlers."""
    safe = logging.makeLogRecord(record.__dict__)
    safe.msg, safe.args = one_line(record.getMessage()), None
    if record.exc_info:
        safe.exc_text = str(formatter.formatException(record.exc_info))
    safe.exc_info = None
    if safe.exc_text:
        safe.exc_text = _lines(safe.exc_text)
    if safe.stack_info:
        safe.stack_info = _lines(safe.stack_info)
    return safe


def _lines(text: str) -> str:
    return "\n".join(one_line(line) for line in text.split("\n"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(_safe_record(record, self))


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        class _JsonFormatter(JsonFormatter):
            def format(self, record: logging.LogRecord) -> str:
                return str(super().format(_safe_record(record, self)))

        return _JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC, microseconds
        )
    return _TextFormatter(
        "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
    )


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def route_prefect_console(log_format: str) -> None:
    """Print Prefect's console lines in dropflow's format.

    Prefect's logging config gives the root logger (and a few of its own) a console handler
    of its own style; each is replaced by one with dropflow's format and the same level, so
    `--log-format json` gives JSON only.
    """
    from watcher.server.prefect_internals import configure_prefect_logging

    configure_prefect_logging()
    for name in (None, "prefect._internal", "uvicorn", "fastapi"):
        target = logging.getLogger(name)
        for index, old in enumerate(target.handlers):
            if type(old) is logging.FileHandler or not isinstance(old, logging.StreamHandler):
                continue
            new = logging.StreamHandler(sys.stderr)
            new.setLevel(old.level)
            new.setFormatter(_formatter(log_format))
            target.handlers[index] = new


def fatal(message: str, log_format: str) -> None:
    # With --log-format json every line is JSON, the last words included.
    if log_format == "json":
        logger.critical(message)
    else:
        print(message, file=sys.stderr)

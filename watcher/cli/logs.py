"""dropflow's log lines: configured once, here, for the service and Prefect's console alike."""

from __future__ import annotations

import logging
import sys

__all__ = ["fatal", "route_prefect_console", "setup_logging"]

logger = logging.getLogger("watcher")


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC, microseconds
        )
    return logging.Formatter(
        "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
    )


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def route_prefect_console(log_format: str) -> None:
    """Print Prefect's console lines in dropflow's format, without expected-outcome errors.

    Prefect's logging config gives the root logger (and a few of its own) a console handler
    of its own style; each is replaced by one with dropflow's format and the same level, so
    `--log-format json` gives JSON only. A job that runs past its timeout is logged by
    dropflow as one INFO line; the task engine's ERROR and traceback for it are kept off the
    console (they still reach the API through Prefect's API handler).
    """
    from watcher.server.prefect_internals import TimeoutRecordFilter, configure_prefect_logging

    configure_prefect_logging()
    for name in (None, "prefect._internal", "uvicorn", "fastapi"):
        target = logging.getLogger(name)
        for index, old in enumerate(target.handlers):
            if type(old) is logging.FileHandler or not isinstance(old, logging.StreamHandler):
                continue
            new = logging.StreamHandler(sys.stderr)
            new.setLevel(old.level)
            new.setFormatter(_formatter(log_format))
            new.addFilter(TimeoutRecordFilter())
            target.handlers[index] = new


def fatal(message: str, log_format: str) -> None:
    # With --log-format json every line is JSON, the last words included.
    if log_format == "json":
        logger.critical(message)
    else:
        print(message, file=sys.stderr)

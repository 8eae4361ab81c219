"""`dropflow`: the command line. Parses arguments, sets up logging and Prefect, runs the service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher import __version__
from watcher.backend import embedded_environment, service_environment
from watcher.config import ConfigError, load_config

__all__ = ["main"]

logger = logging.getLogger("watcher")

EXIT_USAGE = 2
EXIT_FATAL = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropflow",
        description="A hot-folder runner for Prefect: each job file dropped in the inbox "
        "becomes a Prefect flow run and a result file.",
    )
    parser.add_argument("--version", action="version", version=f"dropflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the service in the foreground until SIGTERM or SIGINT",
        description="Run the service in the foreground. SIGTERM or SIGINT stops it gracefully "
        "(running jobs get `shutdown_grace` seconds); a second one stops it at once. Without "
        "PREFECT_API_URL, Prefect's embedded server is started; with it, runs go to that server.",
    )
    run.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="PATH",
        help="the config file (YAML); without it every key takes its default, "
        "relative to the current folder",
    )
    run.add_argument(
        "--no-standby",
        action="store_true",
        help="if another dropflow already serves these folders, exit 2 at once instead of "
        "waiting to take over when it stops",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="`json` writes one JSON object per line (time, level, logger, message), for log "
        "shippers; Prefect's own console lines too (default: text)",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much dropflow logs (default: INFO)",
    )
    return parser


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


def _setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _route_prefect_console(log_format: str) -> None:
    """Print Prefect's console lines in dropflow's format, without expected-outcome errors.

    Prefect's logging config gives the root logger (and a few of its own) a console handler
    of its own style; each is replaced by one with dropflow's format and the same level, so
    `--log-format json` gives JSON only. A job that runs past its timeout is logged by
    dropflow as one INFO line; the task engine's ERROR and traceback for it are kept off the
    console (they still reach the API through Prefect's API handler).
    """
    from watcher.prefect_internals import TimeoutRecordFilter, configure_prefect_logging

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


def _fatal(message: str, log_format: str) -> None:
    # With --log-format json every line is JSON, the last words included.
    if log_format == "json":
        logger.critical(message)
    else:
        print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dropflow` with `argv` (default: `sys.argv[1:]`); return the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        _fatal(f"dropflow: bad config: {exc}", args.log_format)
        return EXIT_USAGE

    if settings.runner == "prefect":
        # Before Prefect is imported (`watcher.runner` imports the flow): it reads its
        # settings, its logging config among them, from the environment then.
        os.environ.update(service_environment(os.environ))
        os.environ.update(embedded_environment(os.environ))

    from watcher import portable
    from watcher.lock import LockError
    from watcher.runner import DirectRunner, PrefectRunner, Runner, RunnerUnavailable
    from watcher.service import FolderError, ServedElsewhere, Service

    if os.environ.get(portable.ENVIRONMENT_VARIABLE, "") not in ("", "0"):
        portable.use(portable.Platform.portable())

    runner: Runner = DirectRunner()
    if settings.runner == "prefect":
        from watcher.embedded import EmbeddedOptions

        options = EmbeddedOptions(
            port=settings.server_port,
            data_dir=settings.data_dir,
            ui=settings.ui,
            history_days=settings.history_days,
        )
        runner = PrefectRunner(
            options, os.environ, on_import=lambda: _route_prefect_console(args.log_format)
        )
    try:
        return Service(settings, runner, standby=not args.no_standby).run()
    except (ServedElsewhere, FolderError) as exc:
        _fatal(f"dropflow: {exc}", args.log_format)
        return EXIT_USAGE
    except (RunnerUnavailable, LockError) as exc:
        _fatal(f"dropflow: cannot start: {exc}", args.log_format)
        return EXIT_FATAL
    except OSError as exc:
        _fatal(f"dropflow: cannot start: {exc}", args.log_format)
        return EXIT_FATAL

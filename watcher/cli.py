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
from watcher.config import ConfigError, Settings, load_config

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
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much dropflow logs (default: INFO)",
    )
    deploy = commands.add_parser(
        "deploy",
        help="create the work pool and register the wait flow's deployment (runner: deployment)",
        description="Create the config's `work_pool` (process type) if it is missing and register "
        "the wait flow as its `deployment`, with a module entrypoint (flows.wait:wait) that any "
        "machine with dropflow installed can run. Needs PREFECT_API_URL. Running it again "
        "changes nothing. Then start workers: prefect worker start --pool <work_pool>.",
    )
    deploy.add_argument(
        "--config", "-c", type=Path, default=None, metavar="PATH", help="the config file (YAML)"
    )
    deploy.set_defaults(log_level="INFO")
    return parser


_NO_API_URL = (
    "runner: deployment needs PREFECT_API_URL: workers on other machines cannot reach an "
    "embedded server. Start a Prefect server (see README, Scaling out) and set PREFECT_API_URL."
)


def _api_url() -> str | None:
    # Before Prefect is imported: it reads its settings from the environment then.
    os.environ.update(service_environment(os.environ))
    from prefect.settings import get_current_settings

    # From the environment or the Prefect profile.
    return get_current_settings().api.url


def _deploy(settings: Settings) -> int:
    import asyncio

    from watcher.deploy import deploy

    if not _api_url():
        print(f"dropflow: {_NO_API_URL}", file=sys.stderr)
        return EXIT_USAGE
    try:
        done = asyncio.run(deploy(settings.work_pool, settings.deployment))
    except Exception as exc:
        print(f"dropflow: cannot deploy: {exc}", file=sys.stderr)
        return EXIT_FATAL
    pool = "created" if done.pool_created else "already there"
    print(
        f"work pool {done.work_pool} ({pool}); deployment {done.deployment} "
        f"({done.deployment_id}), entrypoint {done.entrypoint}\n"
        f"start workers with: prefect worker start --pool {done.work_pool}"
    )
    return 0


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
        )
    )
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dropflow` with `argv` (default: `sys.argv[1:]`); return the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"dropflow: bad config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "deploy":
        return _deploy(settings)

    from watcher import portable
    from watcher.lock import LockError
    from watcher.runner import DirectRunner, PrefectRunner, Runner, RunnerUnavailable
    from watcher.service import FolderError, ServedElsewhere, Service

    if os.environ.get(portable.ENVIRONMENT_VARIABLE, "") not in ("", "0"):
        portable.use(portable.Platform.portable())

    runner: Runner = DirectRunner()
    if settings.runner == "prefect":
        # Before Prefect is imported: it reads its settings from the environment then.
        os.environ.update(service_environment(os.environ))
        os.environ.update(embedded_environment(os.environ))
        from prefect.settings import get_current_settings

        # No API URL in the environment or the Prefect profile: the embedded default.
        embedded = None if get_current_settings().api.url else dict(os.environ)
        runner = PrefectRunner(embedded)
    elif settings.runner == "deployment":
        if not _api_url():
            print(f"dropflow: {_NO_API_URL}", file=sys.stderr)
            return EXIT_USAGE
        from watcher.deployment import DeploymentRunner

        runner = DeploymentRunner(
            settings.deployment,
            settings.work_pool,
            max_attempts=settings.max_attempts,
            start_timeout=settings.start_timeout,
            lost_run_margin=settings.lost_run_margin,
        )
    try:
        return Service(settings, runner, standby=not args.no_standby).run()
    except (ServedElsewhere, FolderError) as exc:
        print(f"dropflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RunnerUnavailable, LockError) as exc:
        print(f"dropflow: cannot start: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:
        print(f"dropflow: cannot start: {exc}", file=sys.stderr)
        return EXIT_FATAL

"""`dropflow run`: the one place that wires the service together: settings, the registry, the
runner the config names, and the `Service` that serves the folders."""

from __future__ import annotations

import argparse
import os
import sys

from watcher import defaults
from watcher.cli.logs import fatal, route_prefect_console
from watcher.config.settings import Settings
from watcher.server.settings import embedded_environment, service_environment

__all__ = ["NO_API_URL", "api_url", "run"]


NO_API_URL = (
    "runner: deployment needs PREFECT_API_URL: workers on other machines cannot reach an "
    "embedded server. Start a Prefect server (see README, Scaling out) and set PREFECT_API_URL."
)


def api_url() -> str | None:
    # Before Prefect is imported: it reads its settings from the environment then.
    os.environ.update(service_environment(os.environ))
    from prefect.settings import get_current_settings

    # From the environment or the Prefect profile.
    return get_current_settings().api.url


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the folders of `settings` until stopped; return the exit status."""
    if settings.runner == "prefect":
        # Before Prefect is imported (`watcher.running.in_process` imports the flow): it reads its
        # settings, its logging config among them, from the environment then.
        os.environ.update(service_environment(os.environ))
        os.environ.update(embedded_environment(os.environ))

    from watcher import features
    from watcher.config.registry import RegistryError
    from watcher.folders.lock import DataDirLock, DataDirTaken, LockError
    from watcher.running.contract import Runner, RunnerUnavailable
    from watcher.running.direct import DirectRunner
    from watcher.running.in_process import PrefectRunner
    from watcher.service.health import EndpointError, endpoints
    from watcher.service.loop import FolderError, ServedElsewhere, Service
    from watcher.service.notify import SystemdNotifier
    from watcher.service.vitals import Vitals

    # Before any child is started: NOTIFY_SOCKET and WATCHDOG_* are taken out of the environment.
    notifier = SystemdNotifier.from_environment(os.environ)

    if os.environ.get(features.ENVIRONMENT_VARIABLE, "") not in ("", "0"):
        features.use(features.Platform.portable())

    registry = settings.registry()
    runner: Runner = DirectRunner()
    data_lock = None
    if settings.runner == "prefect":
        from watcher.server.embedded import EmbeddedOptions
        from watcher.server.startup import ENVIRONMENT_VARIABLE, parse_leads

        try:
            fast_start = parse_leads(os.environ.get(ENVIRONMENT_VARIABLE))
        except ValueError as exc:
            print(f"dropflow: {exc}", file=sys.stderr)
            return defaults.EXIT_USAGE
        options = EmbeddedOptions(
            port=settings.server_port,
            data_dir=settings.data_dir,
            ui=settings.ui,
            history_days=settings.history_days,
            fast_start=fast_start,
        )
        if not os.environ.get("PREFECT_API_URL"):
            # The embedded default: one service per data_dir (its PostgreSQL and history).
            data_lock = DataDirLock(settings.data_dir)
        runner = PrefectRunner(
            options,
            os.environ,
            inherit_fds=data_lock.fds if data_lock is not None else None,
            on_import=lambda: route_prefect_console(args.log_format),
            registry=registry,
            max_return_bytes=settings.max_return_bytes,
        )
    elif settings.runner == "deployment":
        if not api_url():
            print(f"dropflow: {NO_API_URL}", file=sys.stderr)
            return defaults.EXIT_USAGE
        from watcher.running.deployment.runner import DeploymentRunner

        runner = DeploymentRunner(
            settings.deployment,
            settings.work_pool,
            max_attempts=settings.max_attempts,
            start_timeout=settings.start_timeout,
            lost_run_margin=settings.lost_run_margin,
            registry=registry,
            route_deployments=[r.deployment for r in settings.served.values() if r.deployment],
        )
    vitals = Vitals(list(settings.served))
    if settings.events and settings.runner != "direct":
        from watcher.service.events import with_events

        runner = with_events(runner, vitals)  # sent to the runner's API, flushed before it closes
    try:
        service = Service(
            settings,
            runner,
            standby=not args.no_standby,
            registry=registry,
            data_lock=data_lock,
            vitals=vitals,
        )
        if notifier is not None:
            notifier.attach(service.vitals)
        with endpoints(settings, service.vitals, standby=service.standby):
            return service.run()
    except (ServedElsewhere, FolderError, DataDirTaken, EndpointError) as exc:
        fatal(f"dropflow: {exc}", args.log_format)
        return defaults.EXIT_USAGE
    except RegistryError as exc:
        fatal(f"dropflow: bad config: {args.config}: {exc}", args.log_format)
        return defaults.EXIT_USAGE
    except (RunnerUnavailable, LockError, OSError) as exc:
        fatal(f"dropflow: cannot start: {exc}", args.log_format)
        return defaults.EXIT_FATAL

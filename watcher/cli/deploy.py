"""`dropflow deploy`: the work pool, one deployment per registered flow (and per route's own
`deployment`) and the routes' work queues, for `runner: deployment`."""

from __future__ import annotations

import sys

from watcher import defaults
from watcher.cli.run import NO_API_URL, api_url
from watcher.config.settings import Settings

__all__ = ["deploy_command"]


def deploy_command(settings: Settings) -> int:
    import asyncio

    from watcher.cli.validate import loaded_registry
    from watcher.config.registry import RegistryError
    from watcher.running.deployment.registration import deploy

    if not api_url():
        print(f"dropflow: {NO_API_URL}", file=sys.stderr)
        return defaults.EXIT_USAGE
    try:
        flows = list(loaded_registry(settings).loaded_flows())
    except RegistryError as exc:
        print(f"dropflow: bad config: {exc}", file=sys.stderr)
        return defaults.EXIT_USAGE
    try:
        done = asyncio.run(
            deploy(settings.work_pool, settings.deployment, flows, settings.served.values())
        )
    except Exception as exc:
        print(f"dropflow: cannot deploy: {exc}", file=sys.stderr)
        return defaults.EXIT_FATAL
    pool = "created" if done.pool_created else "already there"
    print(f"work pool {done.work_pool} ({pool})")
    for deployed in done.deployments:
        print(
            f"deployment {deployed.deployment} ({deployed.deployment_id}), entrypoint "
            f"{deployed.entrypoint}"
        )
    for queue in done.queues:
        print(f"work queue {queue.name} (priority {queue.priority}, {queue.change})")
    print(f"start workers with: prefect worker start --pool {done.work_pool}")
    return 0

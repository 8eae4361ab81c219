"""Which route an operator's command means: `--route NAME`, the only route, or the route whose
inbox holds a file.

A config without `routes` has one route, `default` (its top-level folders), so every command
works on it as before, with or without `--route default`.
"""

from __future__ import annotations

import os
from pathlib import Path

from watcher.config.routes import Route
from watcher.config.settings import Settings
from watcher.jobs.messages import did_you_mean, one_line

__all__ = ["RouteChoiceError", "choose", "inbox_route", "listed"]


class RouteChoiceError(Exception):
    """The command cannot tell which route is meant; the message says what to write."""


def listed(settings: Settings) -> str:
    """The config's routes, each with its inbox: `invoices (/srv/hot/invoices), ...`."""
    return ", ".join(f"{r.name} ({r.inbox})" for r in settings.served.values())


def choose(settings: Settings, name: str | None, command: str) -> Settings:
    """The settings of the route `name`, or of the only route when `name` is None.

    Raises:
        RouteChoiceError: `name` is no route of the config, or it is None and the config has
            several routes.
    """
    served = settings.served
    if name is None:
        if len(served) == 1:
            return settings.for_route(next(iter(served)))
        raise RouteChoiceError(
            f"{command}: this config has {len(served)} routes: name one with --route NAME: "
            f"{listed(settings)}"
        )
    if name not in served:
        hint = did_you_mean(name, served)
        raise RouteChoiceError(
            one_line(f"{command}: --route: no route named {name!r}{hint}; the config's routes: ")
            + listed(settings)
        )
    return settings.for_route(name)


def inbox_route(settings: Settings, path: Path) -> Route | None:
    """The route whose inbox would take `path` as a job: a file right in its inbox, or, for a
    recursive route, in a subfolder of it at most `max_depth` deep (none of them a
    dotfolder)."""
    folder = Path(os.path.abspath(path)).parent.resolve()
    for route in settings.served.values():
        inbox = route.inbox.resolve()
        if folder == inbox:
            return route
        if not route.recursive or inbox not in folder.parents:
            continue
        parts = folder.relative_to(inbox).parts
        if len(parts) <= route.max_depth and not any(p.startswith(".") for p in parts):
            return route
    return None

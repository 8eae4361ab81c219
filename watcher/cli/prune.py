"""`dropflow prune`: run retention now (`results_days`, `archive_days`), with or without a
service running, printing each path it removes (or, with `--dry-run`, would remove)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from watcher import defaults
from watcher.config.settings import Settings
from watcher.folders.retention import Kind, Pruned, interval, kept_days, prune

__all__ = ["prune_command"]

_WHAT = {"result": "result", "archived": "archived job file", "folder": "empty date folder"}


def prune_command(
    settings: Settings, *, dry_run: bool, as_json: bool, out: TextIO, err: TextIO
) -> int:
    """Run `dropflow prune`; return the exit status (0, or 1 if a folder cannot be read)."""
    if interval(settings) is None:
        if as_json:
            print(json.dumps(_as_json(Pruned(dry_run=dry_run), [], settings), indent=2), file=out)
        else:
            print(
                "results_days and archive_days are both 0 (keep for ever): nothing to do", file=out
            )
        return 0
    paths: list[dict[str, str]] = []
    verb = "would remove" if dry_run else "removed"

    def heard(kind: Kind, path: Path) -> None:
        if as_json:
            paths.append({"kind": kind, "path": str(path)})
        else:
            print(f"{verb} {_WHAT[kind]}: {path}", file=out, flush=False)

    try:
        report = prune(settings, dry_run=dry_run, on_path=heard)
    except OSError as exc:
        print(f"dropflow: prune: {exc}", file=err)
        return defaults.EXIT_FATAL
    if as_json:
        print(json.dumps(_as_json(report, paths, settings), indent=2), file=out)
        return 0
    for name in settings.served:
        where = f"route {name}: " if settings.routes is not None else ""
        kept = report.kept_for_waiters.get(name, 0)
        print(
            f"{where}{verb} {report.results.get(name, 0)} result(s), "
            f"{report.archived.get(name, 0)} archived job file(s), "
            f"{report.folders.get(name, 0)} empty date folder(s)"
            + (f"; kept {kept} result(s) a waiting submit looks for" if kept else ""),
            file=out,
        )
    return 0


def _as_json(report: Pruned, paths: list[dict[str, str]], settings: Settings) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "results_days": settings.results_days,
        "archive_days": settings.archive_days,
        "paths": paths,
        "routes": {
            name: {
                "results_days": kept_days(settings, route, "results"),
                "archive_days": kept_days(settings, route, "archive"),
                "results": report.results.get(name, 0),
                "archived": report.archived.get(name, 0),
                "folders": report.folders.get(name, 0),
                "kept_for_waiters": report.kept_for_waiters.get(name, 0),
            }
            for name, route in settings.served.items()
        },
    }

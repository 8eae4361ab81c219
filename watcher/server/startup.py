"""How the embedded default restarts fast, and the switch that turns each way off.

A restart used to wait for Prefect twice over: the service imported Prefect (about 1.5 s here),
then started the server process, which started PostgreSQL, then imported Prefect's server (3 s
and more), then checked every migration. Each lead below takes a part of that wait off the path
to the first job; each was measured alone (docs/performance.md, "Start-up"; `bench/startup.py`),
and only those that paid are here:

- `early-server`: the service starts the server process before it imports Prefect itself, so
  the two imports overlap (on two cores) instead of following each other.
- `postgres-alongside`: the server process starts PostgreSQL in a thread while it imports
  Prefect, and hands Prefect the database URL once both are done.
- `migrations-once`: once a Prefect version has migrated the cluster, its later starts do not
  check the migrations again (a record in the cluster's folder says which version did).

`DROPFLOW_FAST_START` (read by the CLI) names the leads to use: unset means all, `0` none; the
start-up bench runs the service both ways, side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import metadata
from pathlib import Path

__all__ = [
    "EARLY_SERVER",
    "ENVIRONMENT_VARIABLE",
    "LEADS",
    "MIGRATED_FILE",
    "MIGRATIONS_ONCE",
    "POSTGRES_ALONGSIDE",
    "migrated",
    "parse_leads",
    "record_migrated",
]

logger = logging.getLogger(__name__)

EARLY_SERVER = "early-server"
POSTGRES_ALONGSIDE = "postgres-alongside"
MIGRATIONS_ONCE = "migrations-once"
LEADS: tuple[str, ...] = (EARLY_SERVER, POSTGRES_ALONGSIDE, MIGRATIONS_ONCE)
"""Every way the embedded default starts faster; all are on unless `ENVIRONMENT_VARIABLE` says."""

ENVIRONMENT_VARIABLE = "DROPFLOW_FAST_START"
"""Comma-separated leads to use (see `LEADS`); `0` for none, the start as it was before them."""

MIGRATED_FILE = "dropflow-migrated.json"
"""In the cluster's folder (so it goes when the cluster goes): the Prefect version, and the
migrations it shipped, that last brought this database up to date."""


def parse_leads(text: str | None) -> tuple[str, ...]:
    """The leads `DROPFLOW_FAST_START` names: all when unset or empty, none for `0`.

    Raises:
        ValueError: naming an unknown lead and the known ones.
    """
    if text is None or not text.strip():
        return LEADS
    if text.strip() == "0":
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in LEADS]
    if unknown:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}: unknown {', '.join(unknown)}; use 0 or some of "
            + ", ".join(LEADS)
        )
    return names


def _schema_version() -> dict[str, str]:
    """What decides the schema Prefect's server wants: its version and its migration files."""
    from watcher.server.prefect_internals import migrations_fingerprint

    return {"prefect": metadata.version("prefect"), "migrations": migrations_fingerprint()}


def migrated(pgdata: Path) -> bool:
    """Whether the database in `pgdata` was migrated by this very Prefect (version and
    migrations); a missing or unreadable record means no."""
    try:
        recorded = json.loads((pgdata / MIGRATED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == _schema_version())


def record_migrated(pgdata: Path) -> None:
    """Say that this Prefect has brought the database in `pgdata` up to date."""
    if not pgdata.is_dir():
        return
    with contextlib.suppress(OSError):
        (pgdata / MIGRATED_FILE).write_text(json.dumps(_schema_version()), encoding="utf-8")

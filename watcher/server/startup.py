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
- `blocks-once`: likewise for Prefect's block types: once this Prefect, with these Prefect
  collections installed, has registered them in the cluster, later starts do not load the
  collections and hash the block registry to find out again.
- `app-once`: the server process builds Prefect's app once; Prefect's own server-side clients,
  which ask for it again as its services start, get that one without Prefect re-hashing every
  setting to find it in its cache.
- `engine-early`: the service imports Prefect's flow and task engines (what its first flow run
  would import) while the server starts, not at the first job.

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
    "APP_ONCE",
    "BLOCKS_ONCE",
    "BLOCKS_REGISTERED_FILE",
    "EARLY_SERVER",
    "ENGINE_EARLY",
    "ENVIRONMENT_VARIABLE",
    "LEADS",
    "MIGRATED_FILE",
    "MIGRATIONS_ONCE",
    "POSTGRES_ALONGSIDE",
    "blocks_registered",
    "migrated",
    "parse_leads",
    "record_blocks_registered",
    "record_migrated",
]

logger = logging.getLogger(__name__)

EARLY_SERVER = "early-server"
POSTGRES_ALONGSIDE = "postgres-alongside"
MIGRATIONS_ONCE = "migrations-once"
BLOCKS_ONCE = "blocks-once"
APP_ONCE = "app-once"
ENGINE_EARLY = "engine-early"
LEADS: tuple[str, ...] = (
    EARLY_SERVER,
    POSTGRES_ALONGSIDE,
    MIGRATIONS_ONCE,
    BLOCKS_ONCE,
    APP_ONCE,
    ENGINE_EARLY,
)
"""Every way the embedded default starts faster; all are on unless `ENVIRONMENT_VARIABLE` says."""

ENVIRONMENT_VARIABLE = "DROPFLOW_FAST_START"
"""Comma-separated leads to use (see `LEADS`); `0` for none, the start as it was before them."""

MIGRATED_FILE = "dropflow-migrated.json"
"""In the cluster's folder (so it goes when the cluster goes): the Prefect version, and the
migrations it shipped, that last brought this database up to date."""

BLOCKS_REGISTERED_FILE = "dropflow-blocks.json"
"""In the cluster's folder, like `MIGRATED_FILE`: the Prefect version and the installed Prefect
collections (which add block types) that last registered their block types in this database."""

COLLECTIONS_GROUP = "prefect.collections"
"""The entry-point group of the packages Prefect loads as collections (dropflow is one)."""


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


def _block_set() -> dict[str, object]:
    """What decides the block types Prefect's server registers: its version and the installed
    collections, found from their entry points without importing them (0.03 s here)."""
    collections = sorted(
        {
            f"{point.dist.name}=={point.dist.version}" if point.dist else point.value
            for point in metadata.entry_points(group=COLLECTIONS_GROUP)
        }
    )
    return {"prefect": metadata.version("prefect"), "collections": collections}


def _recorded(path: Path, expected: object) -> bool:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == expected)


def _record(path: Path, value: object) -> None:
    if not path.parent.is_dir():
        return
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(value), encoding="utf-8")


def migrated(pgdata: Path) -> bool:
    """Whether the database in `pgdata` was migrated by this very Prefect (version and
    migrations); a missing or unreadable record means no."""
    return _recorded(pgdata / MIGRATED_FILE, _schema_version())


def record_migrated(pgdata: Path) -> None:
    """Say that this Prefect has brought the database in `pgdata` up to date."""
    _record(pgdata / MIGRATED_FILE, _schema_version())


def blocks_registered(pgdata: Path) -> bool:
    """Whether this Prefect, with the collections installed now, registered its block types in
    the database in `pgdata`; a missing or unreadable record means no."""
    return _recorded(pgdata / BLOCKS_REGISTERED_FILE, _block_set())


def record_blocks_registered(pgdata: Path) -> None:
    """Say that the database in `pgdata` holds the block types of this Prefect and collections."""
    _record(pgdata / BLOCKS_REGISTERED_FILE, _block_set())

"""Which Prefect API the service talks to, and the settings of the embedded default.

With no `PREFECT_API_URL`, dropflow starts Prefect's server itself (`watcher.server.embedded`),
on a PostgreSQL cluster in `data_dir` (`watcher.server.postgres`). On a SQLite file concurrent flow
runs collide: a deferred write transaction that cannot get the lock makes the server answer 503
and the client back off 2 s, 4 s, ...; in memory they queue but the history is lost at every
restart. The figures behind the choice are in docs/prefect.md and `bench/RESULTS.md`.
A database URL the user sets (`PREFECT_SERVER_DATABASE_CONNECTION_URL`) is used instead.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EMBEDDED_SETTINGS", "SERVICE_SETTINGS", "embedded_environment", "service_environment"]

SERVICE_SETTINGS: Mapping[str, str] = {
    # The service logs one line per job start and end itself, and the runs' logs still reach
    # the API; Prefect's per-step console lines only cost time (docs/performance.md, "Prefect
    # settings").
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
"""Prefect settings dropflow uses whichever API it talks to."""

EMBEDDED_SETTINGS: Mapping[str, str] = {
    # The embedded server's telemetry needs the internet and its writes contend with ours at
    # start-up ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Task runs reach the server as events; batching the task-run recorder's writes (each task
    # run still recorded, at most 1 s later) saves server CPU per run. Figures:
    # docs/performance.md, "Prefect settings".
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # PostgreSQL only: a pool large enough for a burst keeps its connections open instead of
    # opening a new PostgreSQL session at every peak (docs/performance.md, "Prefect settings").
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
}
"""Prefect settings dropflow uses when it runs Prefect's embedded server."""

_SAME_SETTING: Mapping[str, tuple[str, ...]] = {
    # Prefect's older names for the same setting, which it still reads.
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": ("PREFECT_SQLALCHEMY_POOL_SIZE",),
}


def service_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The `SERVICE_SETTINGS` to add to `environ`; a setting the user gave is never replaced."""
    return {key: value for key, value in SERVICE_SETTINGS.items() if not environ.get(key)}


def embedded_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to `environ` for the embedded default.

    Empty when `PREFECT_API_URL` points at a server; a setting the user gave is never replaced.
    """
    if environ.get("PREFECT_API_URL"):
        return {}
    added = {}
    for key, value in EMBEDDED_SETTINGS.items():
        names = (key, *_SAME_SETTING.get(key, ()))
        if not any(environ.get(name) for name in names):
            added[key] = value
    return added

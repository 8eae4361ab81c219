"""Which Prefect API the service talks to, and the settings of the embedded default.

With no `PREFECT_API_URL`, dropflow starts Prefect's server itself (`watcher.server.embedded`),
on a PostgreSQL cluster in `data_dir` (`watcher.server.postgres`). On a SQLite file concurrent flow
runs collide: a deferred write transaction that cannot get the lock makes the server answer 503
and the client back off 2 s, 4 s, ... (see ../shared/field-notes.md); in memory they queue but
the history is lost at every restart. The figures behind the choice are in README "Prefect".
A database URL the user sets (`PREFECT_SERVER_DATABASE_CONNECTION_URL`) is used instead.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EMBEDDED_SETTINGS", "SERVICE_SETTINGS", "embedded_environment", "service_environment"]

SERVICE_SETTINGS: Mapping[str, str] = {
    # Prefect prints a rich-formatted console line for every flow and task run step; the
    # service logs one line per job start and end itself, and the runs' logs still reach the
    # API (and its UI). Warnings and errors still print. Measured with `make bench`, dropflow
    # alone, back to back: W1 (200 `sleep: 0`) wall 17.07 -> 15.81 s, CPU 0.094 -> 0.089 s a
    # job; W2 canceled results' worst lateness after flow start + timeout +0.15 -> +0.09 s.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
"""Prefect settings dropflow uses whichever API it talks to."""

EMBEDDED_SETTINGS: Mapping[str, str] = {
    # The embedded server's telemetry needs the internet and its writes contend with ours at
    # start-up ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Task runs reach the server as events (3 per task run here), and its task-run recorder
    # wrote each in a transaction of its own (batch size 1). Batches of up to 50, flushed at
    # least every second: task runs still all get recorded, at most 1 s later; flow runs and
    # their states are written directly and are not affected. Measured with `make bench` (W1,
    # 100 `sleep: 0` jobs, 8 at once, 2 cores, mean of 2 runs): server CPU 0.103 -> 0.081 s per
    # run and wall 12.1 -> 10.1 s with the proposed runner (bench/proposed.py); 0.115 -> 0.101 s
    # and 19.1 -> 18.2 s with today's runner. Batching the event persister as well
    # (PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE=200) measured no further gain.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # PostgreSQL only (SQLite in memory keeps one connection whatever this says). With Prefect's
    # pool of 5 (+10 overflow), 8 flow runs at once and the server's own services check out
    # more than 5 connections; every one past 5 was closed on its return and opened again at
    # the next peak: 111 and 128 new PostgreSQL sessions in two W1 bursts of 100 jobs, each a
    # backend process, a login and asyncpg's type set-up, its prepared statements lost. With
    # 20, connections stay open: 5 new sessions, and PostgreSQL's own CPU 0.028 -> 0.010 s per
    # job (bench/startup.py's CPU columns). PostgreSQL's limit is 100 connections.
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

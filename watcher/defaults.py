"""Every default of dropflow, named and documented in one place.

Paths are relative to the folder of the config file that uses them.
"""

from __future__ import annotations

from typing import Final, Literal

INBOX = "./inbox"
"""Folder watched for job files; created if missing."""

RESULTS = "./results"
"""Folder for result files (`<job stem>.result.yaml`)."""

ARCHIVE = "./archive"
"""Where job files go once their result is written."""

ArchiveLayout = Literal["daily", "flat"]
ARCHIVE_LAYOUT: ArchiveLayout = "daily"
"""How the archive is laid out: `daily` files a job under `<archive>/YYYY/MM/DD/` by the UTC
date it was claimed; `flat` puts every job in the archive folder itself (see
docs/running-for-months.md, "The archive's layout")."""

PROCESSING = "./processing"
"""Where a job file is moved (claimed) before its flow starts; what is here at start-up
was in flight when the service stopped and is run again."""

DATA_DIR = "./data"
"""Where the embedded default keeps its Prefect history (a PostgreSQL cluster, in
`<data_dir>/postgres`). Unused when `PREFECT_API_URL` points at a server."""

SERVER_PORT = 4200
"""Loopback port of the embedded Prefect server: its API at `/api`, its UI at `/`."""

UI = True
"""Serve the Prefect UI from the embedded server."""

EVENTS = True
"""Send each job's steps to the Prefect API as events (`dropflow.job.received`, `.started`,
`.completed`, `.canceled`, `.error`), for the UI's Event Feed and Prefect automations. Not with
`runner: direct`, which has no Prefect API."""

HISTORY_DAYS = 30.0
"""Flow runs that ended longer ago than this are deleted from the embedded server's history
(Prefect's db_vacuum service, hourly); 0 keeps them for ever."""

RESULTS_DAYS = 0.0
"""Result files older than this many days (by file time) are deleted by the service (at start,
then hourly) and by `dropflow prune`; 0 keeps them for ever. At least one hour otherwise."""

ARCHIVE_DAYS = 0.0
"""Archived job files archived longer ago than this many days are deleted, as results are by
`RESULTS_DAYS`; 0 keeps them for ever. The archive step sets an archived file's mtime to the
time it was archived, so a job file's own (perhaps years old) mtime never counts."""

RETENTION_FLOOR_SECONDS = 3600.0
"""The shortest `results_days` / `archive_days` allowed, in seconds: one hour. The environment
variable `RETENTION_FLOOR_ENV` lowers it, for soaks and tests only."""

RETENTION_FLOOR_ENV = "DROPFLOW_RETENTION_FLOOR_SECONDS"
"""Environment variable that lowers `RETENTION_FLOOR_SECONDS` (seconds, > 0): for soaks and
tests that need a retention of minutes. Not for production."""

RETENTION_INTERVAL = 3600.0
"""Seconds between the service's retention runs (after the one at start); shorter only when a
retention period is (possible only below the floor, see `RETENTION_FLOOR_ENV`)."""

WAITER_STALE = 300.0
"""Seconds after which a waiting `dropflow submit --wait`'s marker no longer protects its
results from retention (it refreshes it every `WAITER_REFRESH`): a waiter that died."""

WAITER_REFRESH = 30.0
"""Seconds between refreshes of a waiting `dropflow submit --wait`'s marker."""

METRICS_PORT: int | None = None
"""Port of the health and metrics endpoints (`/healthz`, `/readyz`, `/metrics`); None: not
served. See docs/operating.md."""

METRICS_HOST = "127.0.0.1"
"""Address the health and metrics endpoints listen on: loopback only unless told
(`0.0.0.0` for every IPv4 address, `::` for every address)."""

HEALTH_BEAT_LIMIT = 5.0
"""`/healthz` fails once the service's loop has not turned for this long (it turns about ten
times a second, a standby's too): a wedged loop."""

WAIT_FLOW = "wait"
"""The flow a job file runs when it names none: the built-in wait flow."""

FLOWS: dict[str, str] = {WAIT_FLOW: "flows.wait:wait"}
"""The registered flows, name -> entrypoint (`module.path:function`, or `path/to/file.py:function`
relative to the config's folder). A job file names one by `flow:`; no other code ever runs."""

FILES_DIR = "./files"
"""The folder every path a job names (a flow parameter typed `Path`) must stay inside."""

MAX_RETURN_BYTES = 16 * 1024
"""The largest flow return value (as JSON) a result file carries as `return_value`."""

MAX_CONCURRENT_JOBS = 8
"""How many jobs run at once."""

JOB_TIMEOUT = 2.0
"""Seconds the wait flow waits for the work, for a job file that gives no `timeout`."""

JOB_SLEEP: tuple[float, float] = (0.0, 3.0)
"""Seconds of work for a job file that gives no `sleep`: a uniform draw from this range."""

MAX_TIMEOUT = 3600.0
"""The largest `timeout` a job may ask for, in seconds."""

MAX_SLEEP = 3600.0
"""The largest `sleep` a job may ask for, in seconds."""

PATTERNS: tuple[str, ...] = ("*.yaml", "*.yml")
"""Job file name patterns, matched case-insensitively. Dotfiles and editor temp files
never match."""

POLLING = False
"""Use watchdog's PollingObserver (network drives, where native events miss remote writes)."""

SETTLE_SECONDS = 2.0
"""A file with no close-after-write event (other platforms, polling, a file moved in from
another folder, the backlog) is complete once its size and mtime have not changed for this
long. On Linux a file still open for writing is never taken, however long the writer pauses."""

QUIET_SECONDS = 1.0
"""Where close-after-write events are used (Linux), a file written in place is complete once its
last writer has closed it and this long has passed with no new open or write, so a writer that
appends in several open/close cycles (`echo a > f; echo b >> f`) is not cut at its first close.
Files renamed or moved in do not wait. Chosen by measurement (`python -m bench.writers`): from a
writer's close to its next open took at most 0.005 s for shell `>>` loops and Python, 0.07 s
with a Python start in between, 0.31 s for a script sleeping 0.3 s; 1 s leaves three times that.
Each in-place drop pays it in latency (bench W3)."""

MAX_DEPTH = 8
"""How deep a recursive route takes job files: `<inbox>/a/b/x.yaml` is at depth 2."""

ROUTE_ORDER: Final = "oldest"
"""Which waiting job of a route gets a free run slot first: by the file's mtime."""

RESCAN_INTERVAL = 30.0
"""Seconds between full scans of the inbox, which catch files whose events were lost."""

SHUTDOWN_GRACE = 10.0
"""Seconds running jobs get to finish after SIGTERM/SIGINT; those still running then are put
back for the next start."""

MAX_ATTEMPTS = 3
"""A job in flight when the service died this many times gets an error result instead of a
further attempt."""

MAX_JOB_BYTES = 64 * 1024
"""Job files larger than this are rejected; only this much (plus one byte) is ever read."""

MAX_NAME_CHARS = 100
"""The longest `name` a job may give."""

RUNNER: Literal["prefect", "deployment", "direct"] = "prefect"
"""`prefect` runs each job as a Prefect flow run in this process. `deployment` creates a flow run
of a deployment (`DEPLOYMENT`) that workers on the work pool `WORK_POOL` run, on this machine or
others (see docs/scaling-out.md). `direct` does the same sleep and timeout with no Prefect at
all: only for measuring the watcher itself (benchmarks, burst tests)."""

WORK_POOL = "dropflow"
"""The work pool `dropflow deploy` creates (process type) and the deployment runs on."""

DEPLOYMENT = "wait/dropflow"
"""`<flow name>/<deployment name>`: the wait flow's deployment that `runner: deployment` runs."""

START_TIMEOUT: float | None = None
"""With `runner: deployment`, seconds a job's flow run may wait for a worker to take it; past
that it is cancelled and the job gets an error result naming the work pool. None: wait for ever
(the log says once a minute how many jobs wait for a worker)."""

LOST_RUN_MARGIN = 60.0
"""With `runner: deployment`, a flow run still running this many seconds past its timeout is
taken as lost with its worker (a machine that died): it is marked Crashed and the job runs again
on another worker. The wait flow ends itself at its timeout, so only a dead worker reaches this.
(A run a worker took but never started is lost after
`watcher.running.deployment.runner.PENDING_LIMIT`.)"""

RESULT_FILE_MODE = 0o644
"""Permissions of result files: the owner writes, everyone may read."""

EXIT_FATAL = 1
"""Exit status when a command cannot do its work: the service cannot start, a deploy fails."""

EXIT_USAGE = 2
"""Exit status for bad use: a bad config, a bad option, folders served by another service."""

EXIT_INTERRUPTED = 130
"""Exit status when stopped by a signal rather than finished: 128 + SIGINT, the shell's convention.
`dropflow run` exits with it after a second SIGINT/SIGTERM (stopped at once, running jobs left
claimed), `dropflow submit --wait` when Ctrl-C stops its waiting."""

EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of a command's output went away (`dropflow status | head -1`):
128 + SIGPIPE, what a program the shell sees killed by SIGPIPE exits with; nothing is printed."""

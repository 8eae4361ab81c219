"""A flow or task run that ends `Cancelled` is logged at INFO, not ERROR.

Prefect's async flow engine and its task engine log a run's last line, `Finished in state ...`,
at ERROR for every state but Completed (`prefect/flow_engine.py` line 2050 and
`prefect/task_engine.py` line 384, prefect 3.9.1; its sync flow engine logs it at INFO, line
1298). A wait job stopped at its timeout ends Cancelled on purpose, and that line would show as
an error in the run's logs in the UI. This filter lowers that one line to INFO, in whatever
process runs the flow (the service, a worker, a worker's flow-run process), before any handler
sees it: the API's and the console's alike. It keeps to Python's logging API; what it assumes
of Prefect (the line's text and logger names) is checked by `tests/flows/test_runlogs.py`.
Flows never import `watcher`, so this lives here rather than in `watcher.server.prefect_internals`.
"""

from __future__ import annotations

import logging

__all__ = ["FINISHED_CANCELLED", "RUN_LOGGERS", "CancelledIsNoError", "log_cancelled_as_info"]

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
"""The loggers Prefect's engines log a flow run's and a task run's lines to."""

FINISHED_CANCELLED = "Finished in state Cancelled("
"""How the engines' last line for a run that ended Cancelled begins."""


class CancelledIsNoError(logging.Filter):
    """Lower the engines' ERROR line for a run that ended Cancelled to INFO; pass all else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith(FINISHED_CANCELLED):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def log_cancelled_as_info() -> None:
    """Install `CancelledIsNoError` on Prefect's run loggers, once per process."""
    for name in RUN_LOGGERS:
        run_logger = logging.getLogger(name)
        if not any(isinstance(f, CancelledIsNoError) for f in run_logger.filters):
            run_logger.addFilter(CancelledIsNoError())

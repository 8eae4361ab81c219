"""Stop requests: SIGINT/SIGTERM become a graceful stop, a second one a forced stop.

Modelled on uvicorn's `capture_signals`: the handlers are installed only on the main thread
(Python delivers signals there alone) for as long as the service runs, and the previous ones
are put back after. A handler only counts the request and calls `wake`, which the service
uses to reach its event loop in its own thread (`loop.call_soon_threadsafe`).

SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored: by default each kills the process at once,
with no log line and with its flow runs left Running in Prefect. A daemon is sent SIGHUP to
reload its config, which dropflow does not do; a restart applies a changed config.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]

# One logger name for all of the service's lines, as docs/service.md shows them.
logger = logging.getLogger("watcher.service.loop")

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

# Signals logged and ignored, and why. POSIX only: Windows has none of them.
_IGNORED = {
    "SIGHUP": "dropflow does not reload its config; restart it to apply changes",
    "SIGUSR1": "dropflow has no use for it",
    "SIGUSR2": "dropflow has no use for it",
}


class StopSignals:
    """Counts stop requests, from signals or from any thread.

    The first asks for a graceful stop (`stopping` is set); a second sets `forced`.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        """`wake`: called after each request, from the requesting thread."""
        self._wake = wake
        self.count = 0
        self.forced = False
        self.stopping = threading.Event()  # for waits that run in threads (the standby's)

    def request(self) -> None:
        """Count one stop request; the second and later ones force the stop."""
        self.count += 1
        self.stopping.set()
        if self.count > 1:
            self.forced = True
        self._wake()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """While inside, SIGINT and SIGTERM (and SIGBREAK on Windows) are stop requests, and
        SIGHUP, SIGUSR1 and SIGUSR2 (where they exist) are logged and ignored.

        Off the main thread, where handlers cannot be installed, this does nothing.
        """
        previous: dict[int, _Handler] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
                if signum is not None:
                    previous[signum] = signal.signal(signum, self._on_signal)
            for name in _IGNORED:
                ignored = getattr(signal, name, None)
                if ignored is not None:
                    previous[ignored] = signal.signal(ignored, _on_ignored_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        self.request()


def _on_ignored_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    logger.info("received %s: ignored (%s)", name, _IGNORED[name])

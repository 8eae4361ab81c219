"""`ClaimBackoff`: while claims fail, wait before trying again, and say so once.

A claim fails for the folders' sake far more often than for one file's: the inbox on another
file system than `processing` (EXDEV), a full disk or no inodes left (ENOSPC), a read-only
mount (EROFS), no permission (EACCES). Such an error repeats for every file at every try, so
the service tries again after `first` seconds, doubling up to `most`, and logs when the error
starts, when it changes and when claims work again. Meanwhile every file stays in the inbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ClaimBackoff"]


class ClaimBackoff:
    """The state of claiming: working, or failing with one error and waiting to try again.

    A round of tries is the files handed out together when claiming may go on again: only the
    first failure of a round makes the wait longer.
    """

    def __init__(
        self, first: float, most: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.first = first
        self.most = most
        self._clock = clock
        self.error: tuple[str, int | None] | None = None
        """The failing error (its type and errno), or None while claims work."""
        self.failures = 0
        """Rounds failed with this error."""
        self.delay = first
        self._until = 0.0

    def wait(self) -> float:
        """Seconds before claims may be tried again; 0 when they may now."""
        return max(0.0, self._until - self._clock())

    def failed(self, exc: OSError) -> bool:
        """Count a failed claim; True when its error is new (to be logged), False when it is
        the error already reported."""
        key = (type(exc).__name__, exc.errno)
        if key != self.error:
            self.error, self.failures, self.delay = key, 1, self.first
        elif self.wait() > 0:
            return False  # the same round: already counted
        else:
            self.failures += 1
            self.delay = min(self.delay * 2, self.most)
        self._until = self._clock() + self.delay
        return self.failures == 1

    def worked(self) -> int:
        """Count a claim that worked; how many rounds had failed before it (0: none)."""
        failures, self.error, self.failures, self.delay = self.failures, None, 0, self.first
        self._until = 0.0
        return failures

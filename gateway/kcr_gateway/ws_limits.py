"""Per-connection bookkeeping for the kernel WebSocket's incoming limits.

:class:`FrameRate` is a token bucket: ``burst`` frames at once, refilled at
``rate`` frames per second. :class:`RejectLog` keeps rejected-frame logging
bounded: the first few rejections of a connection are logged one line each,
the rest are counted and summed up in one line when the connection closes.
"""

from __future__ import annotations

import logging
import time


class FrameRate:
    """Token bucket over frames; :meth:`take` is False once the client is too fast."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class RejectLog:
    """Logs the first ``first`` rejections of one connection; counts the others."""

    def __init__(self, log: logging.Logger, prefix: str, first: int = 10):
        self.log = log
        self.prefix = prefix
        self.first = first
        self.count = 0

    def __call__(self, text: str, *args) -> None:
        self.count += 1
        if self.count <= self.first:
            self.log.warning(self.prefix + text, *args)

    def summary(self) -> None:
        """One line for the rejections that were not logged (call when the connection ends)."""
        hidden = self.count - self.first
        if hidden > 0:
            self.log.warning(self.prefix + "%d more rejected frames were not logged", hidden)

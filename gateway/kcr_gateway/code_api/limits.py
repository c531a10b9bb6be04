"""Per-key call rates and the limits of one call.

:class:`RateLimiter` is a token bucket per key: ``rate`` calls a minute, with bursts of
up to ``rate`` calls; a call over it is refused with the seconds until one is allowed
again (the API answers 429 ``{"error": "rate_limited", "retry_after_seconds": N}``).
Buckets live in this gateway's memory: with several replicas, each applies the rate on
its own.

:class:`CallLimits` are the per-call bounds (:class:`~.config.KCRCodeAPI` traits).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


class RateLimiter:
    """``allow(key, rate)`` → 0 when the call may run, else seconds to wait (≥ 1)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def allow(self, key: str, rate: int) -> int:
        if rate <= 0:
            return 0
        now = self._clock()
        tokens, when = self._buckets.get(key, (float(rate), now))
        tokens = min(float(rate), tokens + (now - when) * rate / 60.0)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) * 60.0 / rate))


@dataclass(frozen=True)
class CallLimits:
    """What one call may use: wall-clock seconds, output and input sizes, file counts."""

    timeout: float = 60.0  #: seconds a call may run before it is interrupted
    max_output_bytes: int = 1 << 20  #: of stdout, and of stderr, returned per call
    max_code_bytes: int = 1 << 20  #: of ``code``
    max_files: int = 50  #: files given in one call (``files``) or uploaded in one request
    max_upload_bytes: int = 100 << 20  #: of one upload request
    max_returned_files: int = 100  #: files listed in one exec response

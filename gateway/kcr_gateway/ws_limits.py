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


class SlotRefused(Exception):
    """A WebSocket over one of :class:`WebSocketSlots`' caps; ``str()`` says which."""

    def __init__(self, message: str, scope: str):
        super().__init__(message)
        self.scope = scope  # "kernel", "identity" or "gateway"


class WebSocketSlots:
    """Kernel WebSockets counted before the upgrade, so an excess one costs an HTTP answer.

    Contract: :meth:`reserve` takes a slot for a socket about to be upgraded, or raises
    :class:`SlotRefused` when the kernel, the identity or the whole gateway already holds its
    cap (0: no cap) of open *or opening* sockets. The caller releases each slot exactly
    once, when the socket has closed (or the upgrade failed). Not thread-safe: the event
    loop owns it.

    Example::

        slot = slots.reserve(kernel_id, "alice")   # SlotRefused -> HTTP 429
        try:
            await handle_the_socket()
        finally:
            slots.release(slot)
    """

    def __init__(self, per_kernel: int, per_identity: int, total: int):
        self.per_kernel = per_kernel
        self.per_identity = per_identity
        self.total = total
        self.open = 0
        self.kernels: dict[str, int] = {}
        self.identities: dict[str, int] = {}

    def reserve(self, kernel_id: str, identity: str) -> tuple[str, str]:
        on_kernel = self.kernels.get(kernel_id, 0)
        if self.per_kernel and on_kernel >= self.per_kernel:
            raise SlotRefused(
                f"kernel {kernel_id} has {on_kernel} WebSockets open (limit {self.per_kernel})",
                "kernel",
            )
        of_identity = self.identities.get(identity, 0)
        if self.per_identity and of_identity >= self.per_identity:
            raise SlotRefused(
                f"{identity} has {of_identity} kernel WebSockets open (limit {self.per_identity})",
                "identity",
            )
        if self.total and self.open >= self.total:
            raise SlotRefused(
                f"the gateway has {self.open} kernel WebSockets open (limit {self.total})",
                "gateway",
            )
        self.open += 1
        self.kernels[kernel_id] = on_kernel + 1
        self.identities[identity] = of_identity + 1
        return kernel_id, identity

    def release(self, slot: tuple[str, str] | None) -> None:
        if slot is None:
            return
        kernel_id, identity = slot
        self.open -= 1
        for counts, key in ((self.kernels, kernel_id), (self.identities, identity)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

"""Per-connection accounting of output queued for a client and not yet sent.

Tornado queues whatever ``write_message`` is given and returns a future that ends once those
bytes are written to the socket. :class:`SendBuffer` adds the size of each frame when it is
queued and takes it off when its future ends, so ``unsent`` is what this client has not read
yet (beyond the kernel's socket buffers). The WebSocket connection decides what to do with
it (pause the kernel's output, disconnect the client); this class only counts and signals.

Example::

    buffer = SendBuffer(limit=4 * MiB)
    buffer.track(len(frame), handler.write_message(frame))
    if buffer.full:
        await buffer.room(timeout=10)   # False: still full after 10 s
"""

from __future__ import annotations

import asyncio


class SendBuffer:
    """Bytes handed to one transport and not yet written; ``full`` above ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.unsent = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def full(self) -> bool:
        return self.unsent > self.limit

    def track(self, size: int, written: asyncio.Future) -> None:
        """Count ``size`` bytes until ``written`` (tornado's write future) is done."""
        self.unsent += size
        if self.full:
            self._room.clear()
        written.add_done_callback(lambda f: self._written(f, size))

    def _written(self, future: asyncio.Future, size: int) -> None:
        if not future.cancelled():
            future.exception()  # a closed socket: the connection's on_close cleans up
        self.unsent -= size
        if not self.full:
            self._room.set()

    async def room(self, timeout: float) -> bool:
        """Wait until the buffer is at or below its limit; ``False`` if it still is not
        after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return not self.full
        return True

"""The shell queue of one kernel: pending ``(listener, msg)`` requests, with their size.

An :class:`asyncio.Queue` that also keeps :attr:`ShellQueue.bytes`, the wire
size of what it holds, so the gateway can refuse requests before one kernel's
queue grows without bound (see ``KCRWebsocketConnection``). Items are put as
``(listener, msg)`` or ``(listener, msg, size)`` and always come out as
``(listener, msg)``; an item put again without a size counts 0 bytes.
"""

from __future__ import annotations

import asyncio


class ShellQueue(asyncio.Queue):
    """FIFO of shell requests; ``bytes`` is the sum of the sizes given at put."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def _put(self, item) -> None:
        listener, msg, *size = item
        size = size[0] if size else 0
        self.bytes += size
        super()._put((listener, msg, size))

    def _get(self):
        listener, msg, size = super()._get()
        self.bytes -= size
        return listener, msg

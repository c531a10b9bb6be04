"""A small owner for background tasks: every task has one, and is drained on close.

Example::

    tasks = TaskOwner("kernel k1", log)
    tasks.spawn(sync_files(), "file sync")
    ...
    await tasks.drain()   # waits for what is running, then cancels what is left

A task's failure is logged with its name (never "exception was never
retrieved"); :meth:`drain` never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine


class TaskOwner:
    """The background tasks of one object (a kernel, the lease keeper, the culler)."""

    def __init__(self, owner: str, log: logging.Logger | logging.LoggerAdapter):
        self.owner = owner
        self.log = log
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        """Run ``coro`` in the background; its exception, if any, is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("%s failed", task.get_name(), exc_info=task.exception())

    def cancel(self) -> None:
        """Cancel every task (without waiting)."""
        for task in list(self._tasks):
            task.cancel()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait up to ``timeout`` s for the running tasks, then cancel the rest and wait."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in pending:
            self.log.warning("%s still running after %ss: cancelled", task.get_name(), timeout)
            task.cancel()
        if pending:
            await asyncio.wait(pending)

"""Blocking work off the event loop, safe in forked and spawned processes.

A process forked from one that used threads inherits their *state* (locks,
queues, "idle worker" counts) but not the threads. asyncio's default executor
is the classic trap: nbclient keeps one event loop per thread, a
``multiprocessing`` child forked after a notebook ran inherits that loop and
its executor, and ``asyncio.to_thread`` there waits forever for a worker
thread that only exists in the parent.

:func:`run_in_thread` uses a thread pool of this module that is created
lazily in each process and forgotten in a forked child
(``os.register_at_fork``), so the first call in the child starts fresh
threads. A spawned child imports this module anew. Nothing here starts a
thread at import time.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def executor() -> ThreadPoolExecutor:
    """This process's thread pool (created on first use)."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kcr-blocking")
        _executor_pid = os.getpid()
    return _executor


def _forget_in_child() -> None:
    # The parent's pool has no threads here; never wait on it, never shut it down.
    global _executor
    _executor = None


os.register_at_fork(after_in_child=_forget_in_child)


async def run_in_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``await fn(*args, **kwargs)`` in this process's thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(), functools.partial(fn, *args, **kwargs))

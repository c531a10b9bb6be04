"""The threads that touch the workspace, running with the sandbox's file-system identity.

With the local backend the runner runs on the host as the gateway's user -- often root --
while the sandboxed worker runs as an unprivileged host uid. Workspace operations must not
carry root's power: if a path check were ever missed, a root thread could read root-only
files or plant root-owned files; a thread whose file-system uid is the sandbox's cannot do
more than the kernel's own code can. And files the API writes must belong to the sandbox
uid, so kernel code can change them.

How: :class:`FileOps` is a small thread pool whose threads each switch, once, when they
start, to the sandbox's fsuid/fsgid with no supplementary groups (``setfsuid``,
``setfsgid`` and the raw ``setgroups`` syscall: all three are per-thread on Linux; glibc's
``setgroups()`` wrapper would change every thread of the process, so it is not used). The
threads never switch back, and every workspace operation of the runner is submitted to this
pool (:meth:`FileOps.run`). Changing fsuid away from 0 also drops the file-system
capabilities (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``, ``CAP_CHOWN``...)
from the thread's effective set.

Why this and not the alternatives: a helper process running as the sandbox uid would need
an RPC and fd passing for every streamed upload and download; switching the identity around
each call on the shared ``asyncio.to_thread`` pool would leave root's identity one forgotten
wrapper (or one failed switch-back) away. Dedicated threads that are switched at birth have
no window: a thread that cannot switch fails every call (and :meth:`FileOps.check` at start
makes the runner refuse to start).

``FileOps(None, None)`` (no identity given, e.g. on Kubernetes where the runner already runs
as the pod's non-root uid, or an unsandboxed local pod) runs the same pool unchanged.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "arm64": 159}.get(platform.machine())


class IdentityError(RuntimeError):
    """The thread could not take the sandbox's file-system identity."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def current_fs_ids() -> tuple[int, int]:
    """This thread's ``(fsuid, fsgid)`` (read from ``/proc/thread-self/status``)."""
    with open("/proc/thread-self/status") as status:
        lines = {k: v for k, _, v in (line.partition(":") for line in status)}
    return int(lines["Uid"].split()[3]), int(lines["Gid"].split()[3])


def become(uid: int, gid: int) -> None:
    """Switch the calling thread (only) to fsuid ``uid``, fsgid ``gid``, groups ``[gid]``."""
    if _SYS_SETGROUPS is None:
        raise IdentityError(f"no per-thread setgroups on {platform.machine()}")
    libc = _libc()
    groups = (ctypes.c_uint * 1)(gid)
    if libc.syscall(_SYS_SETGROUPS, 1, groups) != 0:
        err = ctypes.get_errno()
        raise IdentityError(f"setgroups([{gid}]) failed: {os.strerror(err)}")
    libc.setfsgid(gid)
    libc.setfsuid(uid)
    if current_fs_ids() != (uid, gid):
        raise IdentityError(f"could not switch file identity to {uid}:{gid}")


class FileOps:
    """A thread pool for workspace operations, as ``uid``/``gid`` when both are given."""

    def __init__(self, uid: int | None, gid: int | None, *, threads: int = 4):
        self.uid, self.gid = uid, gid
        switch = uid is not None and gid is not None
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="kcr-files",
            initializer=(lambda: become(uid, gid)) if switch else None,
        )

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` on one of the pool's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    def submit(self, func: Callable[..., object], *args: object) -> None:
        """Fire and forget (for cleanups from synchronous callbacks)."""
        self._pool.submit(func, *args)

    async def check(self) -> tuple[int, int]:
        """The pool's ``(fsuid, fsgid)``; raises if the threads could not switch."""
        ids = await self.run(current_fs_ids)
        if self.uid is not None and ids != (self.uid, self.gid):
            raise IdentityError(f"file threads run as {ids}, not {(self.uid, self.gid)}")
        return ids

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

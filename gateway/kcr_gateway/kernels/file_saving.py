"""A kernel's files reach the file store, whatever the store does meanwhile.

:class:`KCRFileSaver` holds the options (one instance, built by the manager, configured as
``--KCRFileSaver.*``); :class:`KernelFileSaver` is the file syncing of one kernel (one per
:class:`~.remote_kernel.RemoteKernel`). Contract:

* After every cell that changed the workspace, a sync runs in the background
  (:meth:`KernelFileSaver.after_cell`); the cell's ``idle`` and the next request do not
  wait for it. A cell that ends while a sync runs gets one more sync after it (coalesced).
* A sync the file store failed (refused, timed out, answered with an error) is retried with
  backoff (``retry_delay``, doubled up to ``retry_max_delay``) for as long as the kernel has
  its pod: the pod's workspace keeps the files until the store has them.
* The user is told once per outage which files are not saved yet (one ``[kcr] warning``
  line on stderr) and once when they are (``[kcr] The file store is back: ... saved.``).
* A request never waits on a background sync for more than ``sync_wait`` seconds
  (:meth:`settle`); the sync goes on, or, when the pod is gone, is abandoned.
* Before the pod is released on purpose, :meth:`save_before_release` tries once more, now,
  and says which files are still not saved; hibernation is postponed while there are any
  (``culling``), a release that cannot wait names them in the log and, for a move, in the
  resume notice (:attr:`~.remote_kernel.RemoteKernel.files_left_behind`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from traitlets import Float
from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from kcr_kernels.workspace_sync import SyncResult

    from .remote_kernel import RemoteKernel


def name_files(paths: list[str], most: int = 5) -> str:
    """``a.txt, b.txt and 3 more``."""
    if len(paths) <= most:
        return ", ".join(paths)
    return ", ".join(paths[:most]) + f" and {len(paths) - most} more"


class KCRFileSaver(LoggingConfigurable):
    """Options of the background file syncs of every kernel of this gateway."""

    sync_wait = Float(
        1.0,
        config=True,
        help="Most seconds a request (a cell, a move to another pod) waits for a kernel's "
        "background file sync; the sync goes on after that (a slow store delays "
        "durability, not the next cell).",
    )
    retry_delay = Float(
        1.0,
        config=True,
        help="Seconds before a file sync the store failed is tried again; doubled after "
        "every failure up to retry_max_delay.",
    )
    retry_max_delay = Float(
        30.0, config=True, help="Longest wait between two tries of a failed file sync."
    )
    release_wait = Float(
        30.0,
        config=True,
        help="Most seconds a planned release of a pod (hibernation, restart, gateway "
        "shutdown) waits for the kernel's files to reach the store. Hibernation is "
        "postponed when they did not; a release that cannot wait names them in the log.",
    )


class KernelFileSaver:
    """The background file syncs of one kernel (see the module docstring)."""

    def __init__(self, kernel: RemoteKernel, options: KCRFileSaver):
        self.kernel = kernel
        self.options = options
        self.task: asyncio.Task | None = None
        self.again = False  # a cell ended while the sync ran: sync once more
        self.wanted: str | None = None  # that cell's workspace fingerprint
        self.synced_workspace: str | None = None  # runner's fingerprint when last synced
        self.outage: str | None = None  # the store's error while an outage lasts (user told)
        self.outage_files: set[str] = set()  # unsaved during the outage
        self._retry_now = asyncio.Event()  # cut a backoff short
        self._attempt_done = asyncio.Event()  # set after every sync of the loop
        self._last: SyncResult | None = None
        self.backing_off = False

    @property
    def _files(self):
        return self.kernel.host.files

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def new_pod(self) -> None:
        """The kernel got a fresh pod (holding exactly the store's files)."""
        self.synced_workspace = None
        self.outage, self.outage_files = None, set()

    def after_cell(self, fingerprint: str | None) -> None:
        """A cell ended; ``fingerprint`` is the runner's workspace fingerprint (or None)."""
        if fingerprint is not None and fingerprint == self.synced_workspace:
            return  # the cell changed no file
        if self._files is None or self.kernel.runner is None:
            return
        if self.running:
            self.wanted, self.again = fingerprint, True
        else:
            self.task = self.kernel.tasks.spawn(self._run(fingerprint), "file sync")

    async def _run(self, fingerprint: str | None) -> None:
        delay = self.options.retry_delay
        while True:
            runner = self.kernel.runner
            if runner is None:
                return
            if self.again:
                fingerprint, self.again, self.wanted = self.wanted, False, None
            result = await self._files.sync(self.kernel.kernel_id, runner)
            self._last = result
            self._attempt_done.set()
            if self.kernel.runner is not runner:
                return  # the pod went meanwhile
            self._report(result)
            if result.error is None:
                self.synced_workspace = fingerprint
                if not self.again:
                    return
                delay = self.options.retry_delay
                continue
            if not result.store_failed:
                return  # the runner failed: its pod is going away
            self.backing_off = True
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), delay)
            finally:
                self.backing_off = False
                self._retry_now.clear()
            delay = min(delay * 2, self.options.retry_max_delay)

    def _report(self, result: SyncResult) -> None:
        kernel, kid = self.kernel, self.kernel.kernel_id
        if result.notes:
            kernel.session.tell_user(f"[kcr] warning: {result.notes}\n")
        if result.error is not None and result.store_failed:
            new = set(result.unsaved) - self.outage_files
            self.outage_files |= new
            if self.outage is None and self.outage_files:
                self.outage = result.error
                files = sorted(self.outage_files)
                kernel.log.warning(
                    "Kernel %s: %d file(s) not saved (%s): %s; retrying",
                    kid,
                    len(files),
                    result.error,
                    name_files(files, 20),
                )
                kernel.session.tell_user(
                    f"[kcr] warning: {name_files(files)} not saved yet: {result.error}. "
                    "They stay in this pod and are saved as soon as the store answers.\n"
                )
            elif new:
                kernel.log.warning(
                    "Kernel %s: also not saved: %s", kid, name_files(sorted(new), 20)
                )
        elif result.error is None and self.outage is not None:
            files = sorted(self.outage_files)
            self.outage, self.outage_files = None, set()
            kernel.log.info("Kernel %s: the file store is back; saved %s", kid, name_files(files))
            kernel.session.tell_user(f"[kcr] The file store is back: {name_files(files)} saved.\n")

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait for the running sync at most ``timeout`` seconds (default ``sync_wait``);
        True when none runs any more."""
        task = self.task
        if task is None or task.done():
            return True
        timeout = self.options.sync_wait if timeout is None else timeout
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)

    async def abandon(self) -> list[str]:
        """The pod is gone (or must go now): stop the sync; returns the files not saved."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.again = False
        return self.unsaved()

    def unsaved(self) -> list[str]:
        files = self._files
        return files.unsaved(self.kernel.kernel_id) if files is not None else []

    async def save_before_release(self) -> list[str]:
        """Save the workspace now, waiting at most ``release_wait``; returns the files that
        are still not in the store (empty: all saved). Runs with the kernel's lock held."""
        if self._files is None or self.kernel.runner is None:
            return []
        wait = self.options.release_wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        if self.running:  # let the sync in flight end, or one in backoff try at once
            self._attempt_done.clear()
            self._retry_now.set()
            try:
                await asyncio.wait_for(self._attempt_done.wait(), wait)
            except TimeoutError:
                return self.unsaved() or ["(a file sync that is still running)"]
            last = self._last
            if last is not None and last.error is not None and last.store_failed:
                return last.unsaved  # the store still fails: the loop goes on retrying
        remaining = max(deadline - loop.time(), 0.1)
        runner = self.kernel.runner
        if runner is None:
            return self.unsaved()
        try:
            result = await asyncio.wait_for(
                self._files.sync(self.kernel.kernel_id, runner, wait=remaining), remaining
            )
        except TimeoutError:
            return self.unsaved() or ["(a file sync that did not finish)"]
        self._report(result)
        if result.error is None:
            self.synced_workspace = None
            return []
        return result.unsaved

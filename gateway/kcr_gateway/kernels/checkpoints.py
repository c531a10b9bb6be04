"""When a kernel's namespace is saved to the kernel store, and put back into a new pod.

:class:`Checkpointer` contract:

* :meth:`schedule` is called after every cell: once the kernel has stayed idle
  for ``checkpoint_delay`` seconds its namespace is saved (a new cell
  restarts the wait). The timers and the checkpoints they start are owned
  here and stopped by :meth:`close`.
* :meth:`checkpoint` saves now if code ran since the last save (``kernel.dirty``);
  a failure is logged, counted in the metrics and told to the user on stderr
  (unless ``quiet``), and the kernel stays dirty so the next try saves it.
* A scheduled checkpoint that fails is tried again by itself, after ``retry_delay``
  seconds doubling up to ``retry_max_delay`` (a kernel whose store was down is saved
  once the store is back, without waiting for another cell); the user is told once
  when it fails and once when its state is saved again.
* :meth:`restore` puts the last saved namespace into the kernel's (new) runner.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from kcr_kernels import checkpoint as checkpoints
from kcr_kernels.stores import KernelStore

from .. import metrics
from .tasks import TaskOwner

if TYPE_CHECKING:
    from .remote_kernel import RemoteKernel


class KCRCheckpointer(LoggingConfigurable):
    """Checkpoints of every kernel of this replica (one instance, owned by the manager)."""

    store = Instance(KernelStore)
    checkpoint_delay = Float(
        1.0, config=True, help="Idle seconds after a cell before its state is checkpointed."
    )

    retry_delay = Float(
        2.0,
        config=True,
        help="Seconds before a failed checkpoint is tried again (doubling each time).",
    )
    retry_max_delay = Float(
        60.0, config=True, help="The longest wait between two tries of a failed checkpoint."
    )

    def __init__(self, **kw):
        super().__init__(**kw)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures: dict[str, int] = {}  # kernel id -> failed tries in a row
        self.tasks = TaskOwner("checkpointer", self.log)

    def schedule(self, kernel: RemoteKernel, delay: float | None = None) -> None:
        """Checkpoint ``kernel`` once it has been idle for ``checkpoint_delay`` (or
        ``delay``) seconds."""
        self.cancel(kernel)
        self._timers[kernel.kernel_id] = asyncio.get_running_loop().call_later(
            self.checkpoint_delay if delay is None else delay,
            lambda: self.tasks.spawn(
                self._checkpoint_if_idle(kernel), f"checkpoint {kernel.kernel_id}"
            ),
        )

    def cancel(self, kernel: RemoteKernel) -> None:
        """Forget a scheduled checkpoint of ``kernel`` (its pod is going away)."""
        timer = self._timers.pop(kernel.kernel_id, None)
        if timer is not None:
            timer.cancel()

    async def _checkpoint_if_idle(self, kernel: RemoteKernel) -> None:
        self._timers.pop(kernel.kernel_id, None)
        if not (kernel.dirty and kernel.attached and kernel.session.idle):
            return
        kernel_id = kernel.kernel_id
        result = await self.checkpoint(kernel, quiet=kernel_id in self._failures)
        if result is None:
            return
        if not result.saved:
            tries = self._failures[kernel_id] = self._failures.get(kernel_id, 0) + 1
            delay = min(self.retry_delay * 2 ** (tries - 1), self.retry_max_delay)
            self.schedule(kernel, delay)
        elif self._failures.pop(kernel_id, None):
            kernel.session.tell_user(
                "[kcr] The state store is back: this kernel's state is saved.\n"
            )

    async def checkpoint(self, kernel: RemoteKernel, quiet: bool = False):
        """Save the kernel's namespace; warn the user on stderr when that fails."""
        async with kernel.checkpoint_lock:
            return await self.checkpoint_locked(kernel, quiet)

    async def checkpoint_locked(self, kernel: RemoteKernel, quiet: bool = False):
        """:meth:`checkpoint` for a caller that holds ``kernel.checkpoint_lock``.

        Returns the :class:`CheckpointResult`, or ``None`` when there was nothing to save.
        """
        if not kernel.dirty or kernel.runner is None or not kernel.attached:
            return None
        kernel.dirty = False
        result = await checkpoints.checkpoint(self.store, kernel.kernel_id, kernel.runner)
        if not result.saved:
            kernel.dirty = True
            self.log.warning("Checkpoint of kernel %s failed: %s", kernel.kernel_id, result.error)
            if not quiet:
                kernel.session.tell_user(f"[kcr] warning: {result.error}.\n")
            metrics.CHECKPOINTS.labels(outcome="failed").inc()
        else:
            kernel.last_checkpoint = time.time()
            kernel.state_size = result.size
            metrics.CHECKPOINTS.labels(outcome="saved").inc()
            metrics.CHECKPOINT_BYTES.observe(result.size)
            self.log.debug(
                "Kernel %s checkpointed: %d bytes in %.1f ms",
                kernel.kernel_id,
                result.size,
                result.seconds * 1e3,
            )
        return result

    async def restore(self, kernel: RemoteKernel):
        """Put the kernel's last checkpoint into its runner (a :class:`RestoreResult`)."""
        return await checkpoints.restore(self.store, kernel.kernel_id, kernel.runner)

    async def close(self) -> None:
        """Stop every timer and wait for the checkpoints in flight."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.tasks.drain()

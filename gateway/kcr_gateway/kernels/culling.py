"""Idle kernels are hibernated (or shut down); kernels hibernated too long are deleted.

:class:`KCRCuller` contract (like jupyter_client's ``KernelRestarter``, its own
configurable with its own options, started and stopped by the manager):

* every ``cull_interval`` seconds, an attached kernel without activity for
  ``cull_idle_timeout`` seconds (0: never) is hibernated, or shut down when
  ``cull_action`` is ``shutdown``; kernels with a WebSocket open and busy
  kernels are left alone unless ``cull_connected`` / ``cull_busy``;
* a kernel whose state could not be saved stays on its pod and is tried
  again at the next check;
* a kernel hibernated (in the registry, any replica) for more than
  ``max_hibernation_age`` seconds is deleted (0: kept forever).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from traitlets import Bool, Enum, Float, Integer
from traitlets.config import LoggingConfigurable

from kcr_kernels.stores import KernelStore, StoreError

from .errors import quietly
from .tasks import TaskOwner

if TYPE_CHECKING:
    from .remote_kernel import RemoteKernel


class CullTarget(Protocol):
    """What the culler needs of the kernel manager."""

    store: KernelStore

    def attached_kernels(self) -> Iterable[RemoteKernel]:
        """Kernels this replica runs on a pod now."""

    async def remove(self, kernel_id: str) -> None:
        """Shut a kernel down everywhere (record, state, files)."""


class KCRCuller(LoggingConfigurable):
    """Finds idle kernels of this replica and hibernates or removes them."""

    cull_idle_timeout = Integer(
        0, config=True, help="Hibernate (or shut down) kernels idle this many seconds (0: never)."
    )
    cull_interval = Integer(60, config=True, help="Seconds between checks for idle kernels.")
    cull_connected = Bool(
        False, config=True, help="Also cull idle kernels that still have a WebSocket open."
    )
    cull_busy = Bool(False, config=True, help="Also cull kernels that are busy.")
    cull_action = Enum(
        ["hibernate", "shutdown"],
        "hibernate",
        config=True,
        help="What happens to an idle kernel: 'hibernate' keeps its state, 'shutdown' deletes it.",
    )
    max_hibernation_age = Float(
        7 * 24 * 3600.0,
        config=True,
        help="Delete kernels that stayed hibernated this many seconds (0: keep forever).",
    )

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tasks = TaskOwner("culler", self.log)

    def start(self, target: CullTarget) -> None:
        """Check ``target``'s kernels every ``cull_interval`` seconds until :meth:`stop`."""
        if self.cull_idle_timeout > 0:
            self.log.info(
                "Kernels idle for %ss are %s (checked every %ss)",
                self.cull_idle_timeout,
                "hibernated" if self.cull_action == "hibernate" else "shut down",
                self.cull_interval,
            )
        self.tasks.spawn(self._loop(target), "culling")

    def stop(self) -> None:
        self.tasks.cancel()

    async def close(self) -> None:
        self.stop()
        await self.tasks.drain()

    async def _loop(self, target: CullTarget) -> None:
        while True:
            await asyncio.sleep(self.cull_interval)
            try:
                await self.cull(target)
            except Exception:
                self.log.exception("Culling idle kernels failed")

    async def cull(self, target: CullTarget) -> list[str]:
        """One check: hibernate (or shut down) idle kernels; delete ones hibernated too long."""
        now = time.time()
        culled = []
        if self.cull_idle_timeout > 0:
            for kernel in list(target.attached_kernels()):
                idle_for = now - kernel.last_activity
                if idle_for < self.cull_idle_timeout:
                    continue
                if kernel.connections and not self.cull_connected:
                    continue
                if not kernel.session.idle and not self.cull_busy:
                    continue
                self.log.info(
                    "Kernel %s idle for %.0fs: %s", kernel.kernel_id, idle_for, self.cull_action
                )
                if self.cull_action == "shutdown":
                    await quietly(target.remove(kernel.kernel_id), self.log)
                elif not await kernel.hibernate(f"idle for {idle_for:.0f}s"):
                    continue
                culled.append(kernel.kernel_id)
        if self.max_hibernation_age > 0:
            try:
                records = await target.store.list_kernels()
            except StoreError:
                records = []
            for record in records:
                age = now - (record.get("last_activity") or now)
                if record.get("state") == "hibernated" and age > self.max_hibernation_age:
                    self.log.info("Kernel %s hibernated for %.0fs: deleting", record["id"], age)
                    await quietly(target.remove(record["id"]), self.log)
                    culled.append(record["id"])
        return culled

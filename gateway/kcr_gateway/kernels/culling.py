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
  ``max_hibernation_age`` seconds is deleted (0: kept forever);
* a forward jump of the wall clock (an NTP step, a VM resumed) never makes a kernel
  old: ages are wall-clock differences (records are shared by replicas), so between
  two checks the culler compares the wall clock with the monotonic clock, logs a
  jump once, and leaves the jumped time out of the age of every kernel last active
  before it. A jump while no gateway runs cannot be seen this way.
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

    #: a wall-clock step larger than this between two checks (beyond the monotonic
    #: clock's advance) counts as a jump
    clock_jump_threshold = 60.0

    def __init__(self, wall=time.time, monotonic=time.monotonic, **kw):
        super().__init__(**kw)
        self.tasks = TaskOwner("culler", self.log)
        self._wall, self._monotonic = wall, monotonic
        self._last_clocks: tuple[float, float] | None = None
        #: (wall time just after a forward jump, seconds jumped)
        self._jumps: list[tuple[float, float]] = []

    def _watch_clock(self) -> float:
        """The wall time now, after noting a forward jump since the last check."""
        wall, mono = self._wall(), self._monotonic()
        if self._last_clocks is not None:
            last_wall, last_mono = self._last_clocks
            skew = (wall - last_wall) - (mono - last_mono)
            if skew > self.clock_jump_threshold:
                self.log.warning(
                    "The wall clock jumped %.0fs ahead; kernels' idle and hibernation ages "
                    "leave that jump out",
                    skew,
                )
                self._jumps.append((wall, skew))
        self._last_clocks = (wall, mono)
        return wall

    def _age(self, now: float, last_activity: float) -> float:
        """Seconds since ``last_activity``, without the clock's forward jumps since then."""
        jumped = sum(skew for at, skew in self._jumps if last_activity < at - skew)
        return now - last_activity - jumped

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
        now = self._watch_clock()
        culled = []
        if self.cull_idle_timeout > 0:
            for kernel in list(target.attached_kernels()):
                idle_for = self._age(now, kernel.last_activity)
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
                age = self._age(now, record.get("last_activity") or now)
                if record.get("state") == "hibernated" and age > self.max_hibernation_age:
                    self.log.info("Kernel %s hibernated for %.0fs: deleting", record["id"], age)
                    await quietly(target.remove(record["id"]), self.log)
                    culled.append(record["id"])
        return culled

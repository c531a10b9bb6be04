"""Which replica drives which kernel: leases, hand-offs and interrupt requests in the store.

A replica may drive a kernel only while it holds the kernel's lease (key
``{id}``) in the kernel store, so a kernel is never attached to two pods at
once. Two more keys carry requests between replicas:

* ``{id}.handoff``: a replica that needs a kernel another one holds takes this
  key; the holder sees it (within ``lease_interval``), hibernates the kernel
  once it is idle, and the asker takes the lease over.
* ``{id}.interrupt``: an interrupt for a kernel that runs on another replica;
  each distinct request (its token) interrupts the kernel once.

:class:`KCRLeaseKeeper` contract:

* :meth:`acquire` takes a new kernel's lease (``False`` if someone holds it).
* :meth:`take` holds the lease, asking the holder for a hand-off; raises
  :class:`HeldElsewhere` after ``handoff_timeout`` and
  :class:`RegistryUnavailable` when the store fails.
* :meth:`release` gives it up (failures are logged).
* :meth:`ask_interrupt` leaves an interrupt request for the holder.
* :meth:`start` runs the upkeep loop over the attached kernels (renewal,
  hand-offs, interrupt requests) until :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from traitlets import Float, Instance, Unicode, default
from traitlets.config import LoggingConfigurable

from kcr_kernels.stores import KernelStore, StoreError

from .errors import HeldElsewhere, RegistryUnavailable, quietly
from .tasks import TaskOwner

if TYPE_CHECKING:
    from .remote_kernel import RemoteKernel

HANDOFF = ".handoff"
INTERRUPT = ".interrupt"


def default_owner(data_dir: str | None) -> str:
    """A replica name that is the same after a restart on this host with this data folder.

    Two gateways never share a data folder at once (``kcr_gateway.data_lock``), so the
    name is unique among live replicas on one host; without a data folder it is random.
    """
    host = socket.gethostname()
    if not data_dir:
        return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    folder = os.path.realpath(data_dir)
    return f"{host}-{hashlib.sha256(folder.encode()).hexdigest()[:10]}"


def _data_dir_of(configurable) -> str | None:
    """The gateway's ``data_dir``, found up the ``parent`` chain (None outside a gateway)."""
    node = configurable.parent
    while node is not None:
        data_dir = getattr(node, "data_dir", None)
        if isinstance(data_dir, str) and data_dir:
            return data_dir
        node = getattr(node, "parent", None)
    return None


class KCRLeaseKeeper(LoggingConfigurable):
    """This replica's leases in the kernel store (one instance, owned by the manager)."""

    store = Instance(KernelStore)
    owner = Unicode(
        config=True,
        help="This replica's name in leases; it must be unique among live replicas. "
        "Default: $KCR_REPLICA_ID, else <host>-<hash of the data folder> (stable across "
        "restarts, so a restarted gateway takes its own leases over at once; the data "
        "folder's lock keeps it unique on a host), else <host>-<pid>-<random>.",
    )

    @default("owner")
    def _owner_default(self) -> str:
        return os.environ.get("KCR_REPLICA_ID") or default_owner(_data_dir_of(self))

    lease_ttl = Float(15.0, config=True, help="Seconds a kernel lease lives without renewal.")
    lease_interval = Float(
        1.0, config=True, help="Seconds between lease renewals and hand-off checks."
    )
    handoff_timeout = Float(
        30.0, config=True, help="Seconds to wait for another replica to hand a kernel over."
    )
    wait_notice_after = Float(
        1.0,
        config=True,
        help="Seconds a request waits for another replica's lease before its user is told "
        "why on stderr (one line).",
    )

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tasks = TaskOwner("lease keeper", self.log)

    # -- one kernel -----------------------------------------------------------------

    async def acquire(self, kernel_id: str) -> bool:
        """Take a new kernel's lease; ``False`` when another holder has it."""
        try:
            return await self.store.acquire_lease(kernel_id, self.owner, self.lease_ttl)
        except StoreError as e:
            raise RegistryUnavailable(e, kernel_id)

    async def take(self, kernel_id: str, on_wait: Callable[[str], None] | None = None) -> None:
        """Hold the kernel's lease, asking the replica that holds it to hand it over.

        ``on_wait`` gets one sentence for the user when the wait lasts longer than
        ``wait_notice_after`` (the client already sees the kernel ``busy``).
        """
        store, kid = self.store, kernel_id
        try:
            if await store.acquire_lease(kid, self.owner, self.lease_ttl):
                return
            holder = await store.lease_owner(kid)
            self.log.info("Kernel %s is held by %s: asking for a hand-off", kid, holder)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.handoff_timeout
            notice_at = loop.time() + self.wait_notice_after
            while loop.time() < deadline:
                if on_wait is not None and loop.time() >= notice_at:
                    on_wait(
                        f"[kcr] Waiting for gateway replica {holder} to hand this kernel over "
                        f"(it holds the kernel's lease; up to {self.handoff_timeout:g} s, or "
                        f"until its lease expires if that replica is gone).\n"
                    )
                    on_wait = None
                await store.acquire_lease(kid + HANDOFF, self.owner, self.lease_ttl)
                if await store.acquire_lease(kid, self.owner, self.lease_ttl):
                    await store.release_lease(kid + HANDOFF, self.owner)
                    return
                await asyncio.sleep(0.05)
            await store.release_lease(kid + HANDOFF, self.owner)
        except StoreError as e:
            raise RegistryUnavailable(e, kid)
        raise HeldElsewhere(kid, holder, self.handoff_timeout)

    async def release(self, kernel_id: str) -> None:
        """Give the kernel's lease up (a store failure is logged: the lease then expires)."""
        await quietly(self.store.release_lease(kernel_id, self.owner), self.log)

    async def ask_interrupt(self, kernel_id: str) -> None:
        """Interrupt a kernel that another replica holds (a no-op if nobody holds it)."""
        try:
            holder = await self.store.lease_owner(kernel_id)
            if holder and holder != self.owner:
                token = f"{self.owner}:{uuid.uuid4().hex[:8]}"
                await self.store.acquire_lease(
                    kernel_id + INTERRUPT, token, 3 * self.lease_interval
                )
        except StoreError as e:
            raise RegistryUnavailable(e, kernel_id)

    # -- upkeep -----------------------------------------------------------------------

    def start(self, attached: Callable[[], Iterable[RemoteKernel]]) -> None:
        """Keep the leases of the kernels ``attached()`` returns, every ``lease_interval``."""
        self.tasks.spawn(self._keep_leases(attached), "lease upkeep")

    def stop(self) -> None:
        self.tasks.cancel()

    async def close(self) -> None:
        self.stop()
        await self.tasks.drain()

    async def _keep_leases(self, attached: Callable[[], Iterable[RemoteKernel]]) -> None:
        """Renew this replica's leases; act on hand-off and interrupt requests."""
        while True:
            await asyncio.sleep(self.lease_interval)
            for kernel in list(attached()):
                try:
                    await self.keep(kernel)
                except StoreError as e:
                    self.log.warning("Lease upkeep of kernel %s failed: %s", kernel.kernel_id, e)
                except Exception:
                    self.log.exception("Lease upkeep of kernel %s failed", kernel.kernel_id)

    async def keep(self, kernel: RemoteKernel) -> None:
        """One upkeep pass for one attached kernel."""
        kid = kernel.kernel_id
        if not await self.store.renew_lease(kid, self.owner, self.lease_ttl):
            if not await self.store.acquire_lease(kid, self.owner, self.lease_ttl):
                self.log.error("Kernel %s: lease lost to another replica; dropping its pod", kid)
                async with kernel.lock:
                    await kernel.drop_pod()
                kernel.registry_owner = await self.store.lease_owner(kid) or ""
                return
        asker = await self.store.lease_owner(kid + HANDOFF)
        if asker and asker != self.owner:
            if kernel.session.idle:
                await kernel.hibernate(f"hand-off to {asker}")
        wants_interrupt = await self.store.lease_owner(kid + INTERRUPT)
        if wants_interrupt and wants_interrupt not in kernel.interrupts_seen:
            kernel.interrupts_seen.add(wants_interrupt)
            await kernel.session.interrupt()

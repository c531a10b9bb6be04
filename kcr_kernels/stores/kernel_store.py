"""The kernel store interface: kernel registry, state blobs and leases.

Open one with :func:`kcr_kernels.stores.open_kernel_store`; the URL scheme
picks the implementation (``redis://`` for production, ``sqlite:///`` as the
embedded default).
"""

from __future__ import annotations

import abc
from typing import Any


class KernelStore(abc.ABC):
    """Durable kernel registry + state blobs + leases, shared by gateway processes.

    Contract (identical for every implementation, checked by
    ``tests/stores/test_kernel_store_contract.py``):

    Kernel records
        ``put_kernel(kernel_id, record)`` stores a JSON-able ``dict`` (it is
        serialised with :func:`json.dumps`; anything else raises
        :class:`TypeError`), replacing any previous one. ``get_kernel`` returns
        an equal dict or ``None``. ``list_kernels`` returns every stored record,
        in no particular order. ``delete_kernel`` removes the record, its state
        blob and its lease; deleting a missing kernel is not an error.
        Records are never put inside the returned dicts: callers must store
        the kernel id in the record themselves if they need it back from
        ``list_kernels``.

    State blobs
        ``put_state(kernel_id, blob, meta)`` stores the bytes exactly and a
        JSON-able ``meta`` dict (e.g. ``{"created": epoch, "names": [...],
        "errors": [...]}``), replacing the previous blob atomically (readers see
        the old pair or the new pair, never a mix). Over ``max_state_bytes`` it
        raises :class:`StateTooLarge` and keeps the previous blob. With a
        ``state_ttl`` the blob expires that many seconds after it was put;
        ``get_state`` then returns ``None``. ``get_state`` returns
        ``(blob, meta)`` or ``None``. ``delete_state`` is idempotent. State does
        not require a kernel record.

    Leases
        A lease says which owner (a pod, a gateway process: any string) has a
        kernel attached. ``acquire_lease(kernel_id, owner, ttl)`` is atomic and
        returns ``True`` only if the lease was free, expired, or already held by
        ``owner`` (then it is extended to ``ttl`` seconds from now).
        ``renew_lease`` extends it and returns ``True`` only if ``owner`` still
        holds it (an expired lease cannot be renewed: acquire it again).
        ``release_lease`` frees it only if ``owner`` holds it. ``lease_owner``
        returns the current holder or ``None``. SQLite (one host) expires
        leases by the host's monotonic clock, so a wall-clock jump changes
        nothing (a lease from before a reboot is expired); Redis expires them
        by its own clock.

    Errors
        Every failure raises a :class:`StoreError` whose message names the
        store URL (password redacted) and the operation. When the backing
        service cannot be reached it is a :class:`StoreUnavailable`, raised
        within the connect/socket timeout (never a hang). Kernel ids are checked
        by :func:`validate_kernel_id` (:class:`InvalidKernelId`).

    All methods are coroutines that never block the event loop. ``close()``
    releases connections; the store can also be used as ``async with``.
    """

    #: the URL this store was opened with, password redacted
    url: str
    #: seconds a state blob lives after ``put_state``; ``None`` = forever
    state_ttl: float | None
    #: largest state blob accepted, in bytes; ``None`` = no limit of ours
    max_state_bytes: int | None
    #: a store on this machine's disk (SQLite), not a network service: it cannot stall
    #: the way a stopped server does, so callers need not bound its calls more tightly
    local: bool = False

    # -- kernel records -------------------------------------------------
    @abc.abstractmethod
    async def put_kernel(self, kernel_id: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def get_kernel(self, kernel_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def list_kernels(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def delete_kernel(self, kernel_id: str) -> None: ...

    # -- state blobs ----------------------------------------------------
    @abc.abstractmethod
    async def put_state(self, kernel_id: str, blob: bytes, meta: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def get_state(self, kernel_id: str) -> tuple[bytes, dict[str, Any]] | None: ...

    @abc.abstractmethod
    async def delete_state(self, kernel_id: str) -> None: ...

    # -- leases ---------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lease(self, kernel_id: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def renew_lease(self, kernel_id: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def release_lease(self, kernel_id: str, owner: str) -> None: ...

    @abc.abstractmethod
    async def lease_owner(self, kernel_id: str) -> str | None: ...

    # -- lifecycle ------------------------------------------------------
    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the store answers; raise :class:`StoreUnavailable` otherwise."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> KernelStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

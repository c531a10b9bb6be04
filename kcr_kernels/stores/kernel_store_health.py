"""A kernel store that knows when its backing service is down, and then fails fast.

:class:`HealthCheckedKernelStore` wraps any :class:`KernelStore` (the gateway wraps the
one it opens) and keeps one health flag:

* Every call goes to the inner store. Record and lease calls (small, on the request
  path) of a network store are also bounded by ``call_timeout`` seconds; state blobs
  are not (a 500 MB checkpoint may take longer), nor are calls of a ``local`` store
  (SQLite: a busy machine is not an outage); they keep the inner store's own timeouts.
* A call that fails with :class:`StoreUnavailable` (or runs over ``call_timeout``)
  marks the store **down**, logs one warning, and starts a probe that pings the
  inner store every ``probe_interval`` seconds (each ping bounded by
  ``probe_timeout``). While it is down every call raises :class:`StoreUnavailable`
  at once ("known to be unreachable since ..."), so a stalled Redis costs a request
  nothing but the answer. The first ping that succeeds marks it **up** again (one
  info line).
* :meth:`suspect` starts the same probe without marking the store down (a caller
  that gave up waiting on a slow answer, e.g. a bounded listing).
* ``reachable`` / ``down_since`` / ``down_reason`` are the flag, for health views.

Store errors other than "unreachable" (a bad record, a full state) pass through and
do not change the flag. The contract of every method is the inner store's
(``tests/stores/test_kernel_store_contract.py`` runs against this wrapper too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from .errors import StoreUnavailable
from .kernel_store import KernelStore

T = TypeVar("T")


class HealthCheckedKernelStore(KernelStore):
    """``inner`` plus a down/up flag that makes calls fail fast during an outage."""

    def __init__(
        self,
        inner: KernelStore,
        *,
        call_timeout: float | None = 2.0,
        probe_interval: float = 1.0,
        probe_timeout: float = 1.0,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ):
        self.inner = inner
        self.url = inner.url
        self.local = inner.local
        self.state_ttl = inner.state_ttl
        self.max_state_bytes = inner.max_state_bytes
        self.call_timeout = call_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.log = log or logging.getLogger("kcr.stores")
        self.down_since: float | None = None  # wall clock, for messages
        self.down_reason = ""
        self._probe: asyncio.Task | None = None

    # -- the flag -------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def _mark_down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            self.down_reason = reason
            self.log.warning(
                "The kernel store %s is unreachable (%s): requests that need it fail at once "
                "with 503, listings show this gateway's own kernels; retrying every %g s",
                self.url,
                reason,
                self.probe_interval,
            )
        self._start_probe()

    def _mark_up(self) -> None:
        if self.down_since is not None:
            self.log.info(
                "The kernel store %s answers again (it was unreachable for %.1f s)",
                self.url,
                time.time() - self.down_since,
            )
        self.down_since = None
        self.down_reason = ""

    def suspect(self, why: str) -> None:
        """Check the store in the background (it answered too slowly for ``why``)."""
        self.log.info("The kernel store %s is slow (%s): checking it", self.url, why)
        self._start_probe()

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())
            self._probe.add_done_callback(_log_unexpected)

    async def _probe_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.inner.ping(), self.probe_timeout)
            except (StoreUnavailable, TimeoutError) as e:
                reason = (
                    f"no answer within {self.probe_timeout:g} s"
                    if isinstance(e, TimeoutError)
                    else e.detail
                )
                self._mark_down(reason)
            except Exception as e:  # answers, but not as the store should: not "down"
                self.log.warning("Kernel store check failed: %s", e)
                self._mark_up()
                return
            else:
                self._mark_up()
                return
            await asyncio.sleep(self.probe_interval)

    # -- calls ----------------------------------------------------------------------

    async def _call(
        self, operation: str, fn: Callable[[], Awaitable[T]], bounded: bool = True
    ) -> T:
        if self.down_since is not None:
            since = datetime.fromtimestamp(self.down_since).strftime("%H:%M:%S")
            raise StoreUnavailable(
                self.url,
                operation,
                f"the store is known to be unreachable since {since} ({self.down_reason}); "
                "the gateway keeps checking it",
            )
        try:
            if bounded and self.call_timeout and not self.local:
                return await asyncio.wait_for(fn(), self.call_timeout)
            return await fn()
        except TimeoutError:
            reason = f"no answer within {self.call_timeout:g} s"
            self._mark_down(reason)
            raise StoreUnavailable(self.url, operation, reason) from None
        except StoreUnavailable as e:
            self._mark_down(e.detail)
            raise

    async def put_kernel(self, kernel_id: str, record: dict[str, Any]) -> None:
        await self._call("put_kernel", lambda: self.inner.put_kernel(kernel_id, record))

    async def get_kernel(self, kernel_id: str) -> dict[str, Any] | None:
        return await self._call("get_kernel", lambda: self.inner.get_kernel(kernel_id))

    async def list_kernels(self) -> list[dict[str, Any]]:
        return await self._call("list_kernels", self.inner.list_kernels)

    async def delete_kernel(self, kernel_id: str) -> None:
        await self._call("delete_kernel", lambda: self.inner.delete_kernel(kernel_id))

    async def put_state(self, kernel_id: str, blob: bytes, meta: dict[str, Any]) -> None:
        await self._call(
            "put_state", lambda: self.inner.put_state(kernel_id, blob, meta), bounded=False
        )

    async def get_state(self, kernel_id: str) -> tuple[bytes, dict[str, Any]] | None:
        return await self._call("get_state", lambda: self.inner.get_state(kernel_id), False)

    async def delete_state(self, kernel_id: str) -> None:
        await self._call("delete_state", lambda: self.inner.delete_state(kernel_id))

    async def acquire_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        return await self._call(
            "acquire_lease", lambda: self.inner.acquire_lease(kernel_id, owner, ttl)
        )

    async def renew_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        return await self._call(
            "renew_lease", lambda: self.inner.renew_lease(kernel_id, owner, ttl)
        )

    async def release_lease(self, kernel_id: str, owner: str) -> None:
        await self._call("release_lease", lambda: self.inner.release_lease(kernel_id, owner))

    async def lease_owner(self, kernel_id: str) -> str | None:
        return await self._call("lease_owner", lambda: self.inner.lease_owner(kernel_id))

    async def ping(self) -> None:
        """Ask the inner store directly (also while it is flagged down) and update the flag."""
        try:
            if self.call_timeout and not self.local:
                await asyncio.wait_for(self.inner.ping(), self.call_timeout)
            else:
                await self.inner.ping()
        except TimeoutError:
            reason = f"no answer within {self.call_timeout:g} s"
            self._mark_down(reason)
            raise StoreUnavailable(self.url, "ping()", reason) from None
        except StoreUnavailable as e:
            self._mark_down(e.detail)
            raise
        self._mark_up()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            try:
                await self._probe
            except (asyncio.CancelledError, Exception):
                pass
            self._probe = None
        await self.inner.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.inner!r}>"


def _log_unexpected(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("kcr.stores").error(
            "kernel store probe failed", exc_info=task.exception()
        )

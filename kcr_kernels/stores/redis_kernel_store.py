"""Kernel store on Redis (production): ``redis://[user:password@]host:port/db``.

Keys (``{id}`` is the kernel id):

* ``kcr:kernel:{id}`` — string: the kernel record as JSON.
* ``kcr:kernels`` — set of kernel ids with a record (index for ``list_kernels``;
  avoids ``SCAN`` over the whole keyspace).
* ``kcr:state:{id}`` — hash with fields ``blob`` (the state bytes) and ``meta``
  (JSON); one key so the pair is replaced and expires atomically
  (``PEXPIRE`` = ``state_ttl``).
* ``kcr:lease:{id}`` — string: the owner; ``PX`` = lease ttl, so Redis itself
  expires it. Acquire/renew/release are Lua scripts (atomic on the server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._checks import check_blob, check_owner, check_settings, check_ttl, dump_json
from .errors import StoreConfigError, StoreError, StoreUnavailable, redact_url
from .kernel_store import KernelStore
from .keys import validate_kernel_id

T = TypeVar("T")

#: How a RESP2/RESP3 reply can start (an inline PING gets "+PONG" or "-NOAUTH ..." etc.).
_RESP_FIRST_BYTES = {bytes([c]) for c in b"+-:$*_,#!=(%~|>"}

PREFIX = "kcr:"
INDEX_KEY = PREFIX + "kernels"

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def kernel_key(kernel_id: str) -> str:
    return f"{PREFIX}kernel:{kernel_id}"


def state_key(kernel_id: str) -> str:
    return f"{PREFIX}state:{kernel_id}"


def lease_key(kernel_id: str) -> str:
    return f"{PREFIX}lease:{kernel_id}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisKernelStore(KernelStore):
    """:class:`KernelStore` on Redis through redis-py's asyncio client.

    ``timeout`` is both the connect and the socket timeout in seconds (URL
    query options such as ``?socket_timeout=10`` take precedence). A failed
    call is retried twice with a short backoff, then raises
    :class:`StoreUnavailable`; connections are re-established on the next call
    once Redis is back.
    """

    def __init__(
        self,
        url: str,
        *,
        state_ttl: float | None = None,
        max_state_bytes: int | None = None,
        timeout: float = 5.0,
    ):
        check_settings(url, state_ttl, max_state_bytes)
        self._raw_url = url
        self._timeout = timeout
        self._verified = False  # the server was seen to speak Redis
        self.url = redact_url(url)
        self.state_ttl = state_ttl
        self.max_state_bytes = max_state_bytes
        try:
            self._redis = aioredis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
                decode_responses=False,
            )
        except ValueError as e:
            raise StoreConfigError(url, "open_kernel_store", str(e)) from None
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis interaction, turning redis-py errors into store errors."""
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as e:
            raise StoreUnavailable(
                self._raw_url, operation, f"Redis unreachable: {e or type(e).__name__}"
            ) from e
        except RedisError as e:
            raise StoreError(self._raw_url, operation, f"Redis error: {e}") from e

    # -- kernel records -------------------------------------------------
    async def put_kernel(self, kernel_id: str, record: dict[str, Any]) -> None:
        op = f"put_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        data = dump_json(record, "kernel record")

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(kernel_key(kernel_id), data)
                pipe.sadd(INDEX_KEY, kernel_id)
                await pipe.execute()

        await self._call(op, run)

    async def get_kernel(self, kernel_id: str) -> dict[str, Any] | None:
        op = f"get_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        data = await self._call(op, lambda: self._redis.get(kernel_key(kernel_id)))
        return None if data is None else json.loads(data)

    async def list_kernels(self) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            ids = sorted(i.decode() for i in await self._redis.smembers(INDEX_KEY))
            records: list[dict[str, Any]] = []
            stale: list[str] = []
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                values = await self._redis.mget([kernel_key(i) for i in batch])
                for kernel_id, value in zip(batch, values, strict=True):
                    if value is None:
                        stale.append(kernel_id)
                    else:
                        records.append(json.loads(value))
            if stale:  # index entries whose record was removed outside this store
                await self._redis.srem(INDEX_KEY, *stale)
            return records

        return await self._call("list_kernels()", run)

    async def delete_kernel(self, kernel_id: str) -> None:
        op = f"delete_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(kernel_key(kernel_id), state_key(kernel_id), lease_key(kernel_id))
                pipe.srem(INDEX_KEY, kernel_id)
                await pipe.execute()

        await self._call(op, run)

    # -- state blobs ----------------------------------------------------
    async def put_state(self, kernel_id: str, blob: bytes, meta: dict[str, Any]) -> None:
        op = f"put_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        blob = check_blob(self.url, kernel_id, blob, self.max_state_bytes)
        meta_json = dump_json(meta, "state meta")
        key = state_key(kernel_id)

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={"blob": blob, "meta": meta_json})
                if self.state_ttl is not None:
                    pipe.pexpire(key, _ms(self.state_ttl))
                await pipe.execute()

        await self._call(op, run)

    async def get_state(self, kernel_id: str) -> tuple[bytes, dict[str, Any]] | None:
        op = f"get_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        fields = await self._call(op, lambda: self._redis.hgetall(state_key(kernel_id)))
        if not fields or b"blob" not in fields:
            return None
        return fields[b"blob"], json.loads(fields.get(b"meta") or b"{}")

    async def delete_state(self, kernel_id: str) -> None:
        op = f"delete_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        await self._call(op, lambda: self._redis.delete(state_key(kernel_id)))

    # -- leases ---------------------------------------------------------
    async def acquire_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        op = f"acquire_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        ms = _ms(check_ttl(ttl))
        got = await self._call(
            op, lambda: self._acquire(keys=[lease_key(kernel_id)], args=[owner, ms])
        )
        return bool(got)

    async def renew_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        op = f"renew_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        ms = _ms(check_ttl(ttl))
        got = await self._call(
            op, lambda: self._renew(keys=[lease_key(kernel_id)], args=[owner, ms])
        )
        return bool(got)

    async def release_lease(self, kernel_id: str, owner: str) -> None:
        op = f"release_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        await self._call(op, lambda: self._release(keys=[lease_key(kernel_id)], args=[owner]))

    async def lease_owner(self, kernel_id: str) -> str | None:
        op = f"lease_owner({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        owner = await self._call(op, lambda: self._redis.get(lease_key(kernel_id)))
        return None if owner is None else owner.decode()

    # -- lifecycle ------------------------------------------------------
    async def ping(self) -> None:
        """PING. The first time, a plain TCP ``PING`` comes first, so that a URL pointing at
        something that answers but is not Redis (an HTTP server, say) is one clear error."""
        if not self._verified:
            await self._check_is_redis()
        await self._call("ping()", self._redis.ping)
        self._verified = True

    async def _check_is_redis(self) -> None:
        parts = urlsplit(self._raw_url)
        if parts.scheme != "redis" or not parts.hostname:
            return  # TLS or a unix socket: redis-py's own errors are clear enough
        host, port = parts.hostname, parts.port or 6379
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self._timeout
            )
        except (OSError, TimeoutError) as e:
            raise StoreUnavailable(
                self._raw_url, "ping()", f"Redis unreachable: {e or type(e).__name__}"
            ) from e
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(80), self._timeout)
        except (OSError, TimeoutError):
            return  # no answer yet (a stalled server): the real PING below times out
        finally:
            writer.close()
        if answer[:1] not in _RESP_FIRST_BYTES:
            first = answer.splitlines()[0] if answer.strip() else b"nothing"
            shown = first[:60].decode("ascii", "replace")
            raise StoreConfigError(
                self._raw_url,
                "ping()",
                f"{host}:{port} answers but is not a Redis server (it replied {shown!r} to "
                "PING): check kernel_store_url",
            )

    async def close(self) -> None:
        await self._redis.aclose()

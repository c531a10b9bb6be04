"""Contract of KernelStore, run against both implementations.

``redis``: a real redis-server (session fixture); ``sqlite``: a real file in a
temp folder. Two store objects on the same backend stand for two gateway
processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
import uuid

import pytest

from kcr_kernels.stores import (
    InvalidKernelId,
    KernelStore,
    StateTooLarge,
    StoreConfigError,
    StoreUnavailable,
    open_kernel_store,
)
from kcr_kernels.stores.kernel_store_health import HealthCheckedKernelStore
from tests.services import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["redis", "sqlite", "redis+health", "sqlite+health"])
def store_url(request, tmp_path) -> str:
    if request.param.startswith("redis"):
        return request.getfixturevalue("redis_url")
    return f"sqlite://{tmp_path}/db/kcr.db"


@pytest.fixture
def health_checked(request) -> bool:
    """The store is wrapped in the gateway's HealthCheckedKernelStore (same contract)."""
    return request.node.callspec.params["store_url"].endswith("+health")


@pytest.fixture
async def open_store(store_url, health_checked):
    """Open stores on the backend under test (closed at teardown)."""
    opened: list[KernelStore] = []

    def opener(**options) -> KernelStore:
        store = open_kernel_store(store_url, **options)
        if health_checked:
            store = HealthCheckedKernelStore(store, call_timeout=None)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


def new_id() -> str:
    return str(uuid.uuid4())


async def wait_until(condition, within: float = 10.0, what: str = "condition"):
    """Poll an async ``condition`` until it returns a true value, or fail after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} did not happen within {within} s")


# -- kernel records ------------------------------------------------------------
async def test_kernel_records_round_trip_list_and_delete(open_store):
    store = open_store()
    a, b = new_id(), new_id()
    record_a = {"id": a, "language": "python", "env": {"X": "1"}, "created": 1.5, "tags": [1, None]}
    await store.put_kernel(a, record_a)
    await store.put_kernel(b, {"id": b, "language": "r"})
    assert await store.get_kernel(a) == record_a
    assert await store.get_kernel(new_id()) is None

    await store.put_kernel(b, {"id": b, "language": "julia"})  # replace
    assert await store.get_kernel(b) == {"id": b, "language": "julia"}

    mine = {r["id"]: r for r in await store.list_kernels() if r.get("id") in (a, b)}
    assert mine == {a: record_a, b: {"id": b, "language": "julia"}}

    await store.put_state(a, b"state", {"names": ["x"]})
    assert await store.acquire_lease(a, "gw-1", 60)
    await store.delete_kernel(a)
    assert await store.get_kernel(a) is None
    assert await store.get_state(a) is None
    assert await store.lease_owner(a) is None
    assert a not in [r.get("id") for r in await store.list_kernels()]
    await store.delete_kernel(a)  # idempotent


async def test_records_are_shared_between_store_objects(open_store):
    one, two = open_store(), open_store()
    k = new_id()
    await one.put_kernel(k, {"id": k})
    assert await two.get_kernel(k) == {"id": k}


async def test_non_json_record_and_meta_are_refused(open_store):
    store = open_store()
    k = new_id()
    with pytest.raises(TypeError, match="JSON"):
        await store.put_kernel(k, {"when": object()})
    with pytest.raises(TypeError, match="JSON"):
        await store.put_state(k, b"x", {"bad": {1, 2}})
    assert await store.get_kernel(k) is None
    assert await store.get_state(k) is None


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a:b", ".hidden", "x" * 129, "sp ace", None])
async def test_invalid_kernel_ids_are_refused(open_store, bad):
    store = open_store()
    with pytest.raises(InvalidKernelId, match="invalid kernel id"):
        await store.get_kernel(bad)
    with pytest.raises(InvalidKernelId):
        await store.put_state(bad, b"x", {})
    with pytest.raises(InvalidKernelId):
        await store.acquire_lease(bad, "gw", 10)


# -- state blobs ---------------------------------------------------------------
async def test_state_round_trip_is_exact(open_store):
    one, two = open_store(), open_store()
    k = new_id()
    blob = bytes(range(256)) * 4096 + b"\x00\r\n"  # 1 MiB of every byte value, and then some
    meta = {"created": 1700000000.25, "names": ["df", "model"], "errors": [["sock", "no"]]}
    assert await one.get_state(k) is None
    await one.put_state(k, blob, meta)
    assert await two.get_state(k) == (blob, meta)

    await two.put_state(k, b"v2", {"names": []})
    assert await one.get_state(k) == (b"v2", {"names": []})

    await one.delete_state(k)
    assert await two.get_state(k) is None
    await one.delete_state(k)  # idempotent


async def test_empty_state_blob(open_store):
    store = open_store()
    k = new_id()
    await store.put_state(k, b"", {})
    assert await store.get_state(k) == (b"", {})


async def test_state_expires_after_ttl(open_store):
    short = open_store(state_ttl=0.3)
    forever = open_store()
    gone, kept = new_id(), new_id()
    await short.put_state(gone, b"bye", {})
    await forever.put_state(kept, b"stay", {})
    assert await short.get_state(gone) == (b"bye", {})

    await wait_until(
        lambda: _is_none(short.get_state(gone)), what="expiry of a state with state_ttl=0.3"
    )
    assert await forever.get_state(gone) is None
    assert await forever.get_state(kept) == (b"stay", {})


async def _is_none(awaitable) -> bool:
    return (await awaitable) is None


async def test_state_over_the_limit_is_refused_and_previous_kept(open_store, store_url):
    store = open_store(max_state_bytes=1000)
    k = new_id()
    await store.put_state(k, b"a" * 1000, {"v": 1})  # exactly at the limit: fine
    with pytest.raises(StateTooLarge) as info:
        await store.put_state(k, b"b" * 1001, {"v": 2})
    err = info.value
    assert (err.size, err.limit) == (1001, 1000)
    assert "1001" in str(err) and "1000" in str(err) and "max_state_bytes" in str(err)
    assert store_url.split("://")[0] in str(err)
    assert await store.get_state(k) == (b"a" * 1000, {"v": 1})


@pytest.mark.parametrize("options", [{"state_ttl": 0}, {"state_ttl": -1}, {"max_state_bytes": -5}])
async def test_bad_settings_are_refused(store_url, options):
    with pytest.raises(StoreConfigError):
        open_kernel_store(store_url, **options)


# -- leases --------------------------------------------------------------------
async def test_lease_is_exclusive_between_two_gateways(open_store):
    gw1, gw2 = open_store(), open_store()
    k = new_id()
    assert await gw1.lease_owner(k) is None
    assert await gw1.acquire_lease(k, "gw-1", 60)
    assert not await gw2.acquire_lease(k, "gw-2", 60)
    assert await gw2.lease_owner(k) == "gw-1"
    assert await gw1.acquire_lease(k, "gw-1", 60)  # already ours: still true

    assert not await gw2.renew_lease(k, "gw-2", 60)
    await gw2.release_lease(k, "gw-2")  # not ours: no effect
    assert await gw1.lease_owner(k) == "gw-1"
    assert await gw1.renew_lease(k, "gw-1", 60)

    await gw1.release_lease(k, "gw-1")
    assert await gw2.lease_owner(k) is None
    assert await gw2.acquire_lease(k, "gw-2", 60)
    assert await gw1.lease_owner(k) == "gw-2"


async def test_expired_lease_can_be_taken_over_and_not_renewed(open_store):
    gw1, gw2 = open_store(), open_store()
    k = new_id()
    assert await gw1.acquire_lease(k, "gw-1", 0.3)
    assert not await gw2.acquire_lease(k, "gw-2", 60)
    await wait_until(lambda: gw2.acquire_lease(k, "gw-2", 60), what="take-over of an expired lease")
    assert await gw1.lease_owner(k) == "gw-2"
    assert not await gw1.renew_lease(k, "gw-1", 60)


async def test_renewal_keeps_the_lease_past_its_first_ttl(open_store):
    gw1, gw2 = open_store(), open_store()
    k = new_id()
    assert await gw1.acquire_lease(k, "gw-1", 0.3)
    assert await gw1.renew_lease(k, "gw-1", 60)
    started = time.monotonic()
    await asyncio.sleep(0.6)  # wait past the first ttl (not a timing assertion)
    assert time.monotonic() - started >= 0.3
    assert not await gw2.acquire_lease(k, "gw-2", 60)
    assert await gw2.lease_owner(k) == "gw-1"


async def test_concurrent_acquire_has_exactly_one_winner(open_store):
    gw1, gw2 = open_store(), open_store()
    k = new_id()
    attempts = [(gw1 if i % 2 else gw2).acquire_lease(k, f"owner-{i}", 60) for i in range(40)]
    results = await asyncio.gather(*attempts)
    assert results.count(True) == 1
    winner = f"owner-{results.index(True)}"
    assert await gw1.lease_owner(k) == winner


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
async def test_bad_lease_ttl_is_refused(open_store, ttl):
    store = open_store()
    with pytest.raises(ValueError, match="ttl"):
        await store.acquire_lease(new_id(), "gw", ttl)


# -- failures ------------------------------------------------------------------
def test_unknown_scheme_and_bad_sqlite_urls_are_refused():
    for url in ["mysql://h/db", "sqlite://relative/kcr.db", "sqlite:///", "nonsense"]:
        with pytest.raises(StoreConfigError, match="open_kernel_store"):
            open_kernel_store(url)


async def test_unopenable_sqlite_file_is_unavailable():
    store = open_kernel_store("sqlite:///proc/kcr-nope/kcr.db")
    with pytest.raises(StoreUnavailable, match=re.escape("sqlite:///proc/kcr-nope/kcr.db")):
        await store.ping()
    await store.close()


async def test_redis_going_away_and_coming_back(redis_server):
    server = RedisServer(binary=redis_server.binary).start()
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    try:
        store = open_kernel_store(url, timeout=2)
        k = new_id()
        await store.put_state(k, b"before", {})
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(store.get_state(k), 15)
        assert time.monotonic() - started < 15
        message = str(info.value)
        assert f"127.0.0.1:{server.port}" in message and "get_state" in message
        assert "s3cret-pw" not in message and "***" in message
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.acquire_lease(k, "gw", 10), 15)

        server.start()  # same port, empty (no persistence)
        assert await store.get_state(k) is None
        await store.put_state(k, b"after", {})
        assert await store.get_state(k) == (b"after", {})
        await store.close()
    finally:
        server.close()


async def test_redis_refusing_connections_is_unavailable():
    from tests.services import free_port

    store = open_kernel_store(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    with pytest.raises(StoreUnavailable, match="Redis unreachable"):
        await asyncio.wait_for(store.ping(), 15)
    await store.close()


async def test_unresponsive_redis_is_unavailable_not_a_hang(redis_server):
    server = RedisServer(binary=redis_server.binary).start()
    try:
        store = open_kernel_store(server.url, timeout=0.5)
        await store.ping()
        server.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            with pytest.raises(StoreUnavailable, match="Redis unreachable"):
                await asyncio.wait_for(store.get_kernel(new_id()), 15)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await wait_until(lambda: _answers(store), what="recovery after SIGCONT")
        await store.close()
    finally:
        server.close()


async def _answers(store: KernelStore) -> bool:
    try:
        await store.ping()
    except StoreUnavailable:
        return False
    return True


_CONTENDER = """
import asyncio, json, sys
from kcr_kernels.stores import open_kernel_store

async def main(url, owner, ids):
    store = open_kernel_store(url)
    won = [k for k in ids if await store.acquire_lease(k, owner, 60)]
    await store.close()
    print(json.dumps(won))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
"""


async def test_two_processes_contend_for_leases(store_url):
    ids = [new_id() for _ in range(30)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CONTENDER, store_url, f"proc-{n}", *ids,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]  # fmt: skip
    outputs = [await p.communicate() for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    won = [set(json.loads(out)) for out, _err in outputs]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(ids)
    store = open_kernel_store(store_url)
    owners = {k: await store.lease_owner(k) for k in ids}
    await store.close()
    assert owners == {k: ("proc-0" if k in won[0] else "proc-1") for k in ids}

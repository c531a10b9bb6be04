"""PodPool logic against FakePodBackend: filling, leasing, refill bounds, failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from kcr_kernels.backends.base import PodStartError
from kcr_kernels.pool import PodPool, PoolConfig, PoolExhausted, UnknownLanguage
from tests.fakes.fake_pod_backend import FakePodBackend


async def until(condition, seconds: float = 5.0) -> None:
    """Poll ``condition()`` until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.005)


@pytest.fixture
async def make_pool():
    pools = []

    async def make(configs, backend=None, **kw):
        backend = backend or FakePodBackend()
        kw.setdefault("health_interval", 0)
        pool = PodPool(backend, configs, **kw)
        pools.append(pool)
        await pool.start()
        return pool, backend

    yield make
    for pool in pools:
        await pool.stop()


async def test_start_returns_at_once_and_fills_in_background(make_pool):
    backend = FakePodBackend(start_delay=0.2)
    pool, _ = await make_pool([PoolConfig("python", warm=3)], backend)
    assert backend.started
    assert pool.status()["python"]["warm"] == 0
    assert pool.status()["python"]["starting"] == 3
    await pool.wait_warm(5)
    assert pool.status()["python"] == {
        "warm": 3,
        "leased": 0,
        "starting": 0,
        "target": 3,
        "max": 0,
    }


async def test_refill_concurrency_is_bounded(make_pool):
    backend = FakePodBackend(start_delay=0.05)
    pool, _ = await make_pool(
        [PoolConfig("python", warm=5), PoolConfig("r", warm=3)], backend, refill_concurrency=2
    )
    await pool.wait_warm(10)
    assert backend.peak_starting == 2
    assert len(backend.created) == 8


async def test_acquire_takes_a_warm_pod_and_refills(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=2)])
    await pool.wait_warm(5)
    pod = await pool.acquire("python", "k1")
    assert pod.ready and pod.kernel_id == "k1"
    assert backend.claimed == [pod.name]
    assert pool.status()["python"]["leased"] == 1
    await pool.wait_warm(5)
    assert pool.status()["python"]["warm"] == 2
    assert len(backend.created) == 3


async def test_release_destroys_and_never_reuses(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=1)])
    await pool.wait_warm(5)
    first = await pool.acquire("python", "k1")
    await pool.release(first)
    await until(lambda: first.name in backend.deleted)
    seen = {first.name}
    for i in range(5):
        pod = await pool.acquire("python", f"k{i + 2}")
        assert pod.name not in seen
        seen.add(pod.name)
        await pool.release(pod)
    assert pool.status()["python"]["leased"] == 0


async def test_unknown_language(make_pool):
    pool, _ = await make_pool([PoolConfig("python", warm=0)])
    with pytest.raises(UnknownLanguage, match=r"'cobol'.*configured: python"):
        await pool.acquire("cobol", "k1")


async def test_empty_pool_cold_starts(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=0)])
    pod = await pool.acquire("python", "k1", timeout=5)
    assert pod.ready and pod.kernel_id == "k1"
    assert backend.created == [pod.name]


async def test_cold_start_timeout_is_a_clear_error(make_pool):
    backend = FakePodBackend()
    backend.hang = True
    pool, _ = await make_pool([PoolConfig("python", warm=0)], backend)
    with pytest.raises(PodStartError, match="no warm python pod and a cold start failed"):
        await pool.acquire("python", "k1", timeout=0.2)
    await until(lambda: not backend.pods)  # the half-started pod is gone


async def test_pool_exhausted_at_max(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=1, max=2)])
    await pool.wait_warm(5)
    a = await pool.acquire("python", "k1")
    b = await pool.acquire("python", "k2", timeout=5)
    assert pool.status()["python"]["leased"] == 2
    with pytest.raises(PoolExhausted, match="all 2 python pods are in use"):
        await pool.acquire("python", "k3")
    assert len(backend.pods) == 2
    await pool.release(a)
    c = await pool.acquire("python", "k3", timeout=5)
    assert c.name not in (a.name, b.name)


async def test_at_max_waits_for_a_starting_pod(make_pool):
    backend = FakePodBackend(start_delay=0.3)
    pool, _ = await make_pool([PoolConfig("python", warm=1, max=1)], backend)
    pod = await pool.acquire("python", "k1", timeout=5)  # waits for the refill, no extra pod
    assert backend.created == [pod.name]


async def test_claim_lost_to_another_replica_takes_next(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=2)])
    await pool.wait_warm(5)
    backend.reject_claims = 1
    pod = await pool.acquire("python", "k1")
    assert backend.claimed == [pod.name]
    assert pod.name == backend.created[1]


async def test_refill_failures_back_off_and_recover(make_pool, caplog):
    backend = FakePodBackend()
    backend.fail_starts = 2
    pool, _ = await make_pool([PoolConfig("python", warm=1)], backend)
    await pool.wait_warm(10)  # 0.5 s + 1 s of backoff, then success
    failures = [r for r in caplog.records if "could not start a warm pod" in r.getMessage()]
    assert len(failures) == 2
    assert "retrying in 0.5 s" in failures[0].getMessage()
    assert "retrying in 1.0 s" in failures[1].getMessage()
    assert len(backend.created) == 3


async def test_health_check_replaces_dead_warm_pods(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=2)], health_interval=0.05)
    await pool.wait_warm(5)
    victim = pool._pools["python"].warm[0]
    backend.kill(victim)
    await until(lambda: victim.name in backend.deleted)
    await pool.wait_warm(5)
    assert victim.name not in [p.name for p in pool._pools["python"].warm]


async def test_dead_leased_pod_reported(make_pool):
    lost = []
    pool, backend = await make_pool(
        [PoolConfig("python", warm=1)], health_interval=0.05, on_pod_lost=lost.append
    )
    await pool.wait_warm(5)
    pod = await pool.acquire("python", "k1")
    backend.kill(pod)
    await until(lambda: lost == [pod])
    await until(lambda: pod.name in backend.deleted)
    assert pool.status()["python"]["leased"] == 0


async def test_acquire_skips_dead_warm_pod(make_pool):
    pool, backend = await make_pool([PoolConfig("python", warm=2)])
    await pool.wait_warm(5)
    dead = pool._pools["python"].warm[0]
    backend.kill(dead)
    pod = await pool.acquire("python", "k1")
    assert pod is not dead
    await until(lambda: dead.name in backend.deleted)


async def test_concurrent_acquires_get_distinct_pods(make_pool):
    pool, _ = await make_pool([PoolConfig("python", warm=3)])
    await pool.wait_warm(5)
    pods = await asyncio.gather(*(pool.acquire("python", f"k{i}", timeout=5) for i in range(6)))
    assert len({p.name for p in pods}) == 6


async def test_stop_deletes_everything_and_is_idempotent(make_pool):
    backend = FakePodBackend(start_delay=0.05)
    pool, _ = await make_pool([PoolConfig("python", warm=2)], backend)
    await pool.wait_warm(5)
    await pool.acquire("python", "k1")
    backend.start_delay = 3600  # a refill is now stuck starting
    await until(lambda: backend.starting == 1)
    await pool.stop()
    assert backend.pods == {}
    await pool.stop()
    with pytest.raises(PodStartError, match="shutting down"):
        await pool.acquire("python", "k2")

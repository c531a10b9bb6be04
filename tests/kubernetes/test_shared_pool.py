"""PodPool in shared mode: two pools (replicas) over Kubernetes backends on the doubles."""

from __future__ import annotations

import pytest
from kubernetes import client

from kcr_kernels.backends.kubernetes import KubernetesBackend
from kcr_kernels.pool import PodPool, PoolConfig, PoolExhausted, is_shared_backend
from tests.kubernetes.conftest import make_config
from tests.kubernetes.conftest_constants import NAMESPACE
from tests.kubernetes.k8s_helpers import eventually


@pytest.fixture
async def make_pool(kube_api):
    """``await make_pool("replica-a", warm=2, max=0, live_kernels=...)`` -> a started pool.

    The pool starts its backend (one watch per language), as in the gateway.
    """
    pools: list[PodPool] = []

    async def make(owner: str, warm: int = 2, max: int = 0, **kw) -> PodPool:
        backend = KubernetesBackend(
            make_config(owner), api_client=client.ApiClient(kube_api.configuration())
        )
        kw = {"health_interval": 0, "refill_interval": 0.2, "reap_interval": 0, **kw}
        pool = PodPool(backend, [PoolConfig("python", warm=warm, max=max)], **kw)
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.stop()
        await pool.backend.close()


def pods(kube_api, state: str | None = None) -> list[dict]:
    return [
        p
        for p in kube_api.pods(NAMESPACE)
        if state is None or p["metadata"]["labels"].get("kcr.dev/state") == state
    ]


async def test_kubernetes_is_a_shared_backend_and_status_is_cluster_wide(kubelet, make_pool):
    a = await make_pool("replica-a")
    assert a.shared and is_shared_backend(a.backend)
    b = await make_pool("replica-b")
    await b.wait_warm(30)
    pod = await a.acquire("python", "kernel-1")
    await eventually(lambda: b.status()["python"]["leased"] == 1, what="B sees A's lease")
    assert b.status()["python"]["leased_here"] == 0
    assert a.status()["python"]["leased_here"] == 1
    await a.release(pod)


async def test_a_replica_finds_the_pool_full_and_the_reaper_trims_an_overshoot(
    kube_api, kubelet, make_pool
):
    a = await make_pool("replica-a")
    b = await make_pool("replica-b")
    await b.wait_warm(30)
    assert len(pods(kube_api)) == 2  # b created none: the target is cluster-wide
    # Two replicas refilling at the same moment can overshoot; make it happen.
    extra = [await a.backend.create("python") for _ in range(2)]
    for pod in extra:
        await a.backend.wait_ready(pod, 30)
    await eventually(lambda: a.status()["python"]["warm"] == 4, what="4 warm pods")

    async def trimmed() -> bool:
        await b.reap()
        return a.status()["python"]["warm"] == 2 and len(pods(kube_api)) == 2

    await eventually(trimmed, timeout=30, what="warm pods trimmed to the target")


async def test_leased_pods_are_reaped_only_when_their_kernel_is_gone(kube_api, kubelet, make_pool):
    registry = {"kernel-1"}

    async def live_kernels() -> set[str]:
        return set(registry)

    a = await make_pool("replica-a", warm=1, live_kernels=live_kernels)
    blind = await make_pool("replica-blind", warm=1)  # no live_kernels: never reaps a lease
    pod = await a.acquire("python", "kernel-1")
    await eventually(
        lambda: a.status()["python"]["leased"] == blind.status()["python"]["leased"] == 1,
        what="the lease seen by both watches",
    )

    assert pod.name not in await blind.reap()
    assert pod.name not in await a.reap()  # kernel-1 is registered
    registry.clear()
    assert pod.name not in await a.reap()  # still a's own lease
    a._pools["python"].leased.clear()  # a "forgets" it, as a killed replica would
    assert pod.name in await a.reap()
    assert kube_api.get(NAMESPACE, pod.name) is None


async def test_a_registry_outage_skips_the_reaper_pass(kube_api, kubelet, make_pool):
    async def broken() -> set[str]:
        raise ConnectionError("redis is down")

    a = await make_pool("replica-a", warm=1)
    b = await make_pool("replica-b", warm=1, live_kernels=broken)
    pod = await a.acquire("python", "kernel-1")
    await eventually(lambda: b.status()["python"]["leased"] == 1, what="lease seen")
    assert await b.reap() == []  # not even warm pods beyond the target: the pass is skipped
    assert kube_api.get(NAMESPACE, pod.name) is not None


async def test_max_is_cluster_wide(kubelet, make_pool):
    a = await make_pool("replica-a", warm=1, max=2)
    b = await make_pool("replica-b", warm=1, max=2)
    await a.acquire("python", "kernel-1")
    await b.acquire("python", "kernel-2")
    await eventually(lambda: a.status()["python"]["leased"] == 2, what="both leases seen")
    with pytest.raises(PoolExhausted, match=r"all 2 python pods are in use .*across all"):
        await a.acquire("python", "kernel-3", timeout=5)

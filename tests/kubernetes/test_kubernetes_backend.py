"""The Kubernetes backend against the API-server and kubelet doubles, with real runners."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from kcr_kernels.backends.base import PodStartError
from tests.kubernetes.conftest_constants import NAMESPACE
from tests.kubernetes.k8s_helpers import eventually, fill


async def healthz(pod) -> dict:
    response = await AsyncHTTPClient().fetch(
        f"{pod.url}/healthz", headers={"Authorization": f"Bearer {pod.token}"}
    )
    return json.loads(response.body)


async def test_pool_fills_to_target_and_acquire_leases_a_ready_pod(kubelet, make_backend):
    backend = await make_backend("replica-a")
    ready = await fill(backend, "python", 2)
    assert len(ready) == 2
    warm = await backend.warm_pods("python")
    assert {p.name for p in warm} == {p.name for p in ready}
    assert backend.warm_deficit("python", 2) == 0

    pod = warm[0]
    assert await backend.claim(pod, "kernel-1")
    assert (await healthz(pod))["status"] == "ok"
    assert pod.kernel_id == "kernel-1"
    await eventually(lambda: backend.counts("python")["leased"] == 1, what="lease seen by watch")
    assert [p.name for p in await backend.warm_pods("python")] == [warm[1].name]
    assert backend.warm_deficit("python", 2) == 1  # the pool refills what was leased

    await backend.delete(pod)
    await eventually(lambda: pod.name not in kubelet.running(), what="runner stopped")
    assert not await backend.alive(pod)


async def test_two_replicas_never_lease_one_pod_twice(kubelet, make_backend):
    a = await make_backend("replica-a")
    b = await make_backend("replica-b")
    await fill(a, "python", 4)
    await eventually(lambda: len(b.counts("python")) and b.counts("python")["warm"] == 4)

    async def acquire(backend, kernel_id):
        for pod in await backend.warm_pods("python"):
            if await backend.claim(pod, kernel_id):
                return pod.name
        return None

    kernels = [f"k{i}" for i in range(12)]
    results = await asyncio.gather(*(acquire(a if i % 2 else b, k) for i, k in enumerate(kernels)))
    leased = [name for name in results if name]
    assert len(leased) == 4  # every warm pod leased exactly once, the rest get None
    assert len(set(leased)) == 4
    owners = {p["metadata"]["name"]: p["metadata"]["labels"] for p in kube_api_pods(a)}
    for name, kernel in zip(results, kernels, strict=True):
        if name:
            assert owners[name]["kcr.dev/kernel-id"] == kernel


def kube_api_pods(backend):
    return list(backend._cache.values())


async def test_watch_expiry_relists_and_keeps_following(kube_api, kubelet, make_backend):
    backend = await make_backend("replica-a")
    watch = backend.watches["python"]
    lists_before = watch.lists
    kube_api.expire_watches()
    await eventually(lambda: watch.lists > lists_before, what="relist after 410 Gone")
    (pod,) = await fill(backend, "python", 1)
    assert [p.name for p in await backend.warm_pods("python")] == [pod.name]
    # Resumption after a plain watch timeout (watch_timeout=5 s) uses resourceVersion, no relist.
    lists = watch.lists
    await eventually(lambda: watch.resumes >= 2, timeout=15, what="watch resumed after timeout")
    assert watch.lists == lists


async def test_pod_deleted_behind_the_gateways_back_is_noticed_and_replaced(
    kube_api, kubelet, make_backend
):
    backend = await make_backend("replica-a")
    first, second = await fill(backend, "python", 2)
    kube_api.delete_pod(NAMESPACE, first.name)
    await eventually(lambda: backend.warm_deficit("python", 2) == 1, what="deletion noticed")
    assert not await backend.alive(first)
    (replacement,) = await fill(backend, "python", 2)
    assert {p.name for p in await backend.warm_pods("python")} == {second.name, replacement.name}


async def test_crashed_runner_is_not_alive_and_gets_reaped(kube_api, kubelet, make_backend):
    backend = await make_backend("replica-a")
    (pod,) = await fill(backend, "python", 1)
    kubelet.kill_runner(NAMESPACE, pod.name)
    await eventually(lambda: not backend._cache[pod.name]["status"]["phase"] == "Running")
    assert not await backend.alive(pod)
    assert await backend.reap([], {"python": 1}) == [pod.name]


async def test_reaper_cleans_up_after_a_killed_replica(kube_api, kubelet, make_backend):
    # Replica A leases two pods and dies without releasing them (its pods stay, as on a cluster).
    a = await make_backend("replica-a")
    p1, p2, _p3, _p4 = await fill(a, "python", 4)
    assert await a.claim(p1, "kernel-alive")
    assert await a.claim(p2, "kernel-gone")
    await a.close()

    b = await make_backend("replica-b")
    deleted = await b.reap(["kernel-alive"], {"python": 1})
    # kernel-gone's pod, and one of the two warm pods beyond the target of 1.
    assert p2.name in deleted and p1.name not in deleted
    assert len(deleted) == 2
    await eventually(lambda: b.counts("python") == {"warm": 1, "starting": 0, "leased": 1})
    assert await b.reap(["kernel-alive"], {"python": 1}) == []


async def test_kernel_started_through_replica_a_is_reachable_through_replica_b(
    kubelet, make_backend
):
    a = await make_backend("replica-a")
    b = await make_backend("replica-b")
    (pod,) = await fill(a, "python", 1)
    assert await a.claim(pod, "kernel-42")
    found = await eventually(lambda: b.pod_for_kernel("kernel-42"), what="B sees A's lease")
    assert found.name == pod.name and found.url == pod.url and found.token == pod.token
    assert found.meta["owner"] == "replica-a"
    assert (await healthz(found))["status"] == "ok"


async def test_a_pod_that_never_gets_ready_fails_with_a_clear_error(kube_api, make_backend):
    # No kubelet: the pod stays Pending.
    backend = await make_backend("replica-a")
    pod = await backend.create("python")
    with pytest.raises(PodStartError, match=r"not ready after 1 s .*describe pod"):
        await backend.wait_ready(pod, 1)
    assert kube_api.get(NAMESPACE, pod.name) is None  # deleted, nothing leaks


async def test_unknown_language_is_refused(make_backend):
    backend = await make_backend("replica-a")
    with pytest.raises(PodStartError, match=r"no runner image configured for 'cobol'"):
        await backend.create("cobol")

"""Gateway replicas sharing one Kubernetes pool, end to end.

Two real ``KCRGateway`` instances in this process (and, for the abrupt-stop
test, a third one as a subprocess that is SIGKILLed) use the ``kubernetes``
backend against one :class:`FakeKubeApiServer` + :class:`FakeKubelet` (real
runner processes), a real Redis registry and one shared file store. What a
user or operator would see is checked on the API-server double: which pods
exist, which are warm, and which kernel each is leased to.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest
import pytest_asyncio

from tests.fakes.kube_api import FakeKubeApiServer
from tests.fakes.kubelet import FakeKubelet
from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel
from tests.jupyter_server.servers import GatewayProcess
from tests.kubernetes.conftest_constants import NAMESPACE
from tests.kubernetes.k8s_helpers import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

WARM = 2
#: Fast leases and checkpoints so hand-offs and lease expiry take a few seconds.
FAST = {"checkpoint_delay": 0.05, "lease_interval": 0.1, "lease_ttl": 3.0}
#: A claim this young is never reaped (its kernel may not be in the registry yet).
REAP_GRACE = 8.0


def write_config(path, kube_api: FakeKubeApiServer, owner: str) -> str:
    """The chart's ``kcr.json`` for one replica, pointed at the API-server double."""
    path.write_text(
        json.dumps(
            {
                "backend": "kubernetes",
                "pools": {"python": {"warm": WARM}},
                "kubernetes": {
                    "api_server": kube_api.url,
                    "namespace": NAMESPACE,
                    "languages": {"python": "ghcr.io/kcr-kernels/runner-python:0.1.0"},
                    "pool_labels": {"app.kubernetes.io/instance": "replicas-test"},
                    "owner": owner,
                    "watch_timeout": 5,
                    "start_timeout": 30,
                    "reap_grace": REAP_GRACE,
                    "reap_interval": 1,
                },
            }
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def kube_api():
    with FakeKubeApiServer(bookmark_interval=0.5) as api:
        yield api


@pytest.fixture(scope="module")
def kubelet(kube_api):
    with FakeKubelet(kube_api) as k:
        yield k


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("replicas")


@pytest.fixture(scope="module")
def files_url(shared_dir) -> str:
    return f"file://{shared_dir / 'files'}"


async def start_replica(name: str, shared_dir, kube_api, redis_url, files_url):
    config = write_config(shared_dir / f"kcr-{name}.json", kube_api, f"replica-{name}")
    return await start_gateway(
        shared_dir / name,
        manager=FAST,
        backend="kubernetes",
        config_file_json=config,
        kernel_store_url=redis_url,
        files_url=files_url,
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def replicas(kube_api, kubelet, shared_dir, redis_url, files_url):
    """Replicas A and B, started one after the other; B finds A's warm pods."""
    a = await start_replica("a", shared_dir, kube_api, redis_url, files_url)
    b = await start_replica("b", shared_dir, kube_api, redis_url, files_url)
    a.pods_created_by_startup = pod_creations(kube_api)
    yield a, b
    await a.stop_async()
    await b.stop_async()


def base(app) -> str:
    return f"http://127.0.0.1:{app.port}"


def runner_pods(kube_api, state: str | None = None) -> list[dict]:
    pods = [
        p
        for p in kube_api.pods(NAMESPACE)
        if p["metadata"]["labels"].get("app.kubernetes.io/instance") == "replicas-test"
    ]
    if state is not None:
        pods = [p for p in pods if p["metadata"]["labels"].get("kcr.dev/state") == state]
    return pods


def ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def warm_ready(kube_api) -> set[str]:
    return {p["metadata"]["name"] for p in runner_pods(kube_api, "warm") if ready(p)}


def pods_of(kube_api, kernel_id: str) -> list[dict]:
    return [
        p
        for p in runner_pods(kube_api)
        if p["metadata"]["labels"].get("kcr.dev/kernel-id") == kernel_id
    ]


def pod_creations(kube_api) -> int:
    return sum(1 for method, path, _ in kube_api.requests if method == "POST")


async def test_the_pool_fills_to_the_cluster_wide_target(kube_api, replicas):
    a, b = replicas
    # A filled the pool; B started after it and found it full: two pods, not four.
    assert a.pods_created_by_startup == WARM

    # (Other tests may have run first: wait for the pool to settle, as both replicas see it.)
    async def both_report_a_full_pool() -> bool:
        for app in (a, b):
            levels = (await http(base(app), "GET", "/api/kcr/pools")).json()["python"]
            if (levels["warm"], levels["leased"], levels["starting"]) != (WARM, 0, 0):
                return False
        return len(runner_pods(kube_api)) == WARM

    await eventually(both_report_a_full_pool, timeout=30, what=f"{WARM} warm pods on both")
    for app in (a, b):
        levels = (await http(base(app), "GET", "/api/kcr/pools")).json()["python"]
        assert levels["target"] == WARM
        assert levels["scope"] == "cluster" and levels["leased_here"] == 0
        assert (await http(base(app), "GET", "/readyz")).code == 200


async def test_concurrent_starts_on_both_replicas_never_share_a_pod(kube_api, replicas):
    a, b = replicas
    starts = [(a if i % 2 else b) for i in range(8)]
    kernel_ids = await asyncio.gather(*(start_kernel(base(app)) for app in starts))
    assert len(set(kernel_ids)) == 8

    leased = runner_pods(kube_api, "leased")
    by_kernel = {p["metadata"]["labels"]["kcr.dev/kernel-id"]: p for p in leased}
    assert sorted(by_kernel) == sorted(kernel_ids)  # one pod per kernel ...
    assert len({p["metadata"]["name"] for p in leased}) == len(leased) == 8  # ... and per pod

    # Every kernel has a namespace of its own.
    clients = [
        await WSKernelClient.connect(base(app), kid)
        for app, kid in zip(starts, kernel_ids, strict=True)
    ]
    try:
        for client in clients:
            assert (await client.execute(f"me = {client.kernel_id!r}")).content["status"] == "ok"
        for client in clients:
            assert (await client.execute("print(me)")).stdout == f"{client.kernel_id}\n"
    finally:
        for client in clients:
            client.close()

    for app, kid in zip(starts, kernel_ids, strict=True):
        assert (await http(base(app), "DELETE", f"/api/kernels/{kid}")).code == 204
    await eventually(lambda: not runner_pods(kube_api, "leased"), what="leased pods deleted")
    # The pool refills to the target, and the reaper trims any brief overshoot.
    await eventually(
        lambda: len(warm_ready(kube_api)) == WARM and len(runner_pods(kube_api)) == WARM,
        timeout=60,
        what=f"exactly {WARM} warm pods again",
    )


async def test_a_kernel_started_on_a_runs_cells_through_b(kube_api, replicas):
    a, b = replicas
    kernel_id = await start_kernel(base(a))
    on_a = await WSKernelClient.connect(base(a), kernel_id)
    on_b = await WSKernelClient.connect(base(b), kernel_id)
    try:
        assert (await on_a.execute("shared = [1, 2, 3]")).content["status"] == "ok"
        r = await on_b.execute("shared.append(4); print(shared)")
        assert r.stdout == "[1, 2, 3, 4]\n"
        # B holds the kernel now, on a pod of its own; A's pod is gone.
        await eventually(lambda: len(pods_of(kube_api, kernel_id)) == 1, what="A's pod released")
        (pod,) = pods_of(kube_api, kernel_id)
        assert pod["metadata"]["labels"]["kcr.dev/owner"] == "replica-b"
        assert (await on_a.execute("print(len(shared))")).stdout == "4\n"
    finally:
        on_a.close()
        on_b.close()
    assert (await http(base(b), "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    await eventually(lambda: not pods_of(kube_api, kernel_id), what="kernel's pod deleted")


async def test_a_pod_deleted_behind_the_gateways_back_is_replaced(kube_api, kubelet, replicas):
    await eventually(lambda: len(warm_ready(kube_api)) == WARM, what="pool full")
    victim, survivor = sorted(warm_ready(kube_api))
    kube_api.delete_pod(NAMESPACE, victim)
    await eventually(
        lambda: len(warm_ready(kube_api)) == WARM and victim not in warm_ready(kube_api),
        what="a replacement warm pod",
    )
    assert survivor in warm_ready(kube_api)

    # A runner that crashes in its pod (phase Failed) is reaped and replaced too.
    kubelet.kill_runner(NAMESPACE, survivor)
    await eventually(
        lambda: kube_api.get(NAMESPACE, survivor) is None, what="the failed pod reaped"
    )
    await eventually(lambda: len(warm_ready(kube_api)) == WARM, what="pool full again")
    assert len(runner_pods(kube_api)) == WARM


@pytest_asyncio.fixture(loop_scope="module")
async def replica_c(kube_api, shared_dir, redis_url, files_url):
    """Replica C as a ``kcr-gateway`` subprocess on the same pool, registry and files."""
    token = uuid.uuid4().hex
    config = write_config(shared_dir / "kcr-c.json", kube_api, "replica-c")
    proc = GatewayProcess(
        shared_dir / "c",
        token,
        args=[
            f"--KCRGateway.config_file_json={config}",
            "--KCRGateway.backend=kubernetes",
            f"--KCRGateway.kernel_store_url={redis_url}",
            f"--KCRGateway.files_url={files_url}",
            *(f"--KCRKernelManager.{k}={v}" for k, v in FAST.items()),
        ],
    )
    await asyncio.to_thread(proc.start)
    yield proc
    await asyncio.to_thread(proc.stop, 5)


async def test_pods_of_a_killed_replica_are_reaped(kube_api, replicas, replica_c, redis_url):
    a, b = replicas
    c = replica_c
    gone, moved = [await start_kernel(c.url, token=c.token) for _ in range(2)]
    on_c = await WSKernelClient.connect(c.url, moved, token=c.token)
    assert (await on_c.execute("x = 7")).content["status"] == "ok"
    on_c.close()
    await eventually(lambda: a.kernel_store.get_state(moved), what="C's checkpoint of x")
    (old_pod,) = [p["metadata"]["name"] for p in pods_of(kube_api, moved)]
    (gone_pod,) = [p["metadata"]["name"] for p in pods_of(kube_api, gone)]

    os.killpg(c.proc.pid, signal.SIGKILL)  # no shutdown: its leased pods stay behind
    c.proc.wait()

    # A kernel deleted from the registry: its pod is reaped once its claim is old enough.
    assert (await http(base(a), "DELETE", f"/api/kernels/{gone}")).code == 204
    await eventually(
        lambda: kube_api.get(NAMESPACE, gone_pod) is None,
        timeout=REAP_GRACE + 20,
        what="the deleted kernel's pod reaped",
    )

    # A kernel that lives on through B: it resumes on a new pod from C's checkpoint,
    # and the pod C left leased to it is deleted.
    on_b = await WSKernelClient.connect(base(b), moved)
    try:
        r = await on_b.execute("print(x * 6)")
        assert r.stdout == "42\n"
        await eventually(
            lambda: kube_api.get(NAMESPACE, old_pod) is None, what="C's old pod deleted"
        )
        (pod,) = pods_of(kube_api, moved)
        assert pod["metadata"]["labels"]["kcr.dev/owner"] == "replica-b"
        assert (await on_b.execute("print(x)")).stdout == "7\n"
    finally:
        on_b.close()
    assert (await http(base(b), "DELETE", f"/api/kernels/{moved}")).code == 204
    await eventually(lambda: not runner_pods(kube_api, "leased"), what="no leased pod left")

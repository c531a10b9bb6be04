"""Kubernetes: the pools' memory cap is the runner pod's memory limit, and an ``OOMKilled``
pod tells the user, in the cell's error, that the kernel used more than its memory.

A real gateway with the ``kubernetes`` backend against the API-server and kubelet doubles
(real runner processes). The kubelet double's :meth:`~FakeKubelet.oom_kill` does what a
node does at the limit: the container dies, then its status says ``OOMKilled``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from kcr_kernels.backends.k8s_pod_spec import KubernetesConfig, runner_pod_manifest
from tests.fakes.kube_api import FakeKubeApiServer
from tests.fakes.kubelet import FakeKubelet
from tests.gateway.conftest import WSKernelClient, start_gateway, start_kernel
from tests.kubernetes.conftest_constants import NAMESPACE
from tests.kubernetes.k8s_helpers import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

OOM_TEXT = "the kernel used more than 256 MiB of memory and was stopped"


@pytest.fixture(scope="module")
def kube_api():
    with FakeKubeApiServer(bookmark_interval=0.5) as api:
        yield api


@pytest.fixture(scope="module")
def kubelet(kube_api):
    with FakeKubelet(kube_api) as k:
        yield k


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(kube_api, kubelet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("k8s-memory")
    config = folder / "kcr.json"
    config.write_text(
        json.dumps(
            {
                "backend": "kubernetes",
                "pools": {"python": {"warm": 1, "memory": "256Mi"}},
                "kubernetes": {
                    "api_server": kube_api.url,
                    "namespace": NAMESPACE,
                    "languages": {"python": "ghcr.io/kcr-kernels/runner-python:0.1.0"},
                    "pool_labels": {"app.kubernetes.io/instance": "memory-test"},
                    "watch_timeout": 5,
                    "start_timeout": 30,
                },
            }
        )
    )
    app = await start_gateway(
        folder,
        backend="kubernetes",
        config_file_json=str(config),
        pools={"python": {"warm": 1, "memory": "256Mi"}},
    )
    yield app
    await app.stop_async()


def leased_pod(kube_api, kernel_id: str) -> dict:
    for pod in kube_api.pods(NAMESPACE):
        labels = pod["metadata"]["labels"]
        if labels.get("kcr.dev/kernel-id") == kernel_id and not pod["metadata"].get(
            "deletionTimestamp"
        ):
            return pod
    raise AssertionError(f"no pod leased to {kernel_id}")


async def _run_while(client: WSKernelClient, action) -> dict:
    """Start a long cell, do ``action`` once it runs, return the cell's reply content."""
    cell = asyncio.ensure_future(
        client.execute("import time; print('up', flush=True); time.sleep(60)")
    )
    await eventually(
        lambda: any(
            "up" in m["content"].get("text", "") for e in client.pending.values() for m in e.iopub
        ),
        what="cell running",
    )
    action()
    reply = await asyncio.wait_for(cell, 30)
    return reply


async def test_the_pod_gets_the_pools_memory_limit(kube_api, gateway):
    await eventually(lambda: kube_api.pods(NAMESPACE), what="a runner pod")
    limits = kube_api.pods(NAMESPACE)[0]["spec"]["containers"][0]["resources"]
    assert limits["limits"]["memory"] == "256Mi"
    assert limits["requests"]["memory"] == "256Mi"  # the 512Mi default request is lowered


async def test_an_oomkilled_pod_says_so_in_the_cells_error(kube_api, kubelet, gateway):
    base = f"http://127.0.0.1:{gateway.port}"
    kernel_id = await start_kernel(base)
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        name = leased_pod(kube_api, kernel_id)["metadata"]["name"]
        reply = await _run_while(client, lambda: kubelet.oom_kill(NAMESPACE, name))
        assert reply.content["status"] == "error"
        assert reply.content["ename"] == "KernelDied"
        assert OOM_TEXT in reply.content["evalue"], reply.content
        (error,) = reply.outputs("error")
        assert OOM_TEXT in error["evalue"]
        # The kernel goes on, on a fresh pod (its variables are gone).
        again = await client.execute("print(1 + 1)")
        assert again.stdout == "2\n"
    finally:
        client.close()


async def test_a_crash_that_is_not_an_oom_gets_no_memory_message(kube_api, kubelet, gateway):
    base = f"http://127.0.0.1:{gateway.port}"
    kernel_id = await start_kernel(base)
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        name = leased_pod(kube_api, kernel_id)["metadata"]["name"]
        reply = await _run_while(client, lambda: kubelet.kill_runner(NAMESPACE, name))
        assert reply.content["ename"] == "KernelDied"
        assert "memory" not in reply.content["evalue"], reply.content
    finally:
        client.close()


async def test_memory_zero_removes_the_limit_and_bad_sizes_are_refused():
    config = KubernetesConfig.from_dict({"languages": {"python": {"image": "img", "memory": "0"}}})
    pod = runner_pod_manifest(config, "python", "kcr-python-x", "t")
    assert "memory" not in pod["spec"]["containers"][0]["resources"]["limits"]
    config.languages["python"].memory = "lots"
    with pytest.raises(ValueError, match="bad memory size"):
        runner_pod_manifest(config, "python", "kcr-python-x", "t")

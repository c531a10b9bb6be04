"""An API-server double + kubelet double, and backends ("replicas") pointed at them."""

from __future__ import annotations

import pytest
from kubernetes import client

from kcr_kernels.backends.k8s_pod_spec import KubernetesConfig, LanguageSpec
from kcr_kernels.backends.kubernetes import KubernetesBackend
from tests.fakes.kube_api import FakeKubeApiServer
from tests.fakes.kubelet import FakeKubelet
from tests.kubernetes.conftest_constants import NAMESPACE


@pytest.fixture
def kube_api():
    with FakeKubeApiServer(bookmark_interval=0.5) as api:
        yield api


@pytest.fixture
def kubelet(kube_api):
    with FakeKubelet(kube_api) as k:
        yield k


def make_config(owner: str, **overrides) -> KubernetesConfig:
    settings = dict(
        namespace=NAMESPACE,
        languages={"python": LanguageSpec(image="ghcr.io/kcr-kernels/runner-python:0.1.0")},
        pool_labels={"app.kubernetes.io/instance": "test"},
        owner=owner,
        watch_timeout=5,
        start_timeout=30,
        reap_grace=0,
    )
    settings.update(overrides)
    return KubernetesConfig(**settings)


@pytest.fixture
async def make_backend(kube_api):
    """``await make_backend("replica-a")`` -> a started backend with its own client."""
    backends: list[KubernetesBackend] = []

    async def make(owner: str, **overrides) -> KubernetesBackend:
        api_client = client.ApiClient(kube_api.configuration())
        backend = KubernetesBackend(make_config(owner, **overrides), api_client=api_client)
        await backend.start()
        backends.append(backend)
        return backend

    yield make
    for b in backends:
        await b.close()

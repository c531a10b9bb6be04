"""Fixtures: both real file stores (moto's S3 server, a local folder) and real runners."""

from __future__ import annotations

import uuid

import pytest

from kcr_kernels.runner_client import RunnerClient
from kcr_kernels.stores import FileStore, open_file_store
from tests.runner.conftest import RunnerProcess


@pytest.fixture(params=["s3", "file"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
async def store(store_kind, request, tmp_path) -> FileStore:
    if store_kind == "s3":
        s = open_file_store(
            request.getfixturevalue("s3_url"), **request.getfixturevalue("s3_options")
        )
    else:
        s = open_file_store(f"file://{tmp_path}/files")
    yield s
    await s.close()


class Pod:
    """A real runner process (the pod) with a :class:`RunnerClient` to it."""

    def __init__(self, process: RunnerProcess):
        self.process = process
        self.workspace = process.workspace
        self.client = RunnerClient(process.url, process.token)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def new_pod(tmp_path):
    """Factory: ``new_pod(*runner_args)`` starts a runner on a fresh, empty workspace."""
    pods: list[Pod] = []

    def start(*args: str) -> Pod:
        ws = tmp_path / f"pod{len(pods)}"
        ws.mkdir()
        pod = Pod(RunnerProcess(ws, *args))
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture
def kernel_id() -> str:
    return str(uuid.uuid4())

"""Fixtures for real sandboxed pods: LocalBackend + a real runner process + real bwrap."""

from __future__ import annotations

import pytest

from kcr_kernels.backends.local import LocalBackend
from kcr_kernels.backends.sandbox import SandboxLimits
from tests.sandbox.sandbox_helpers import REAL_RUNNER_COMMAND


@pytest.fixture
async def make_backend(tmp_path):
    """``make_backend(**kw)`` -> a started LocalBackend (closed at teardown)."""
    backends = []

    async def make(**kw):
        kw.setdefault("runner_command", REAL_RUNNER_COMMAND)
        kw.setdefault("limits", SandboxLimits())
        backend = LocalBackend(tmp_path / f"gw{len(backends)}", **kw)
        backends.append(backend)
        await backend.start()
        return backend

    yield make
    for backend in backends:
        await backend.close()


@pytest.fixture
async def pod_factory(make_backend):
    """``pod_factory(**backend_kw)`` -> a ready sandboxed pod."""
    backend = None

    async def make(**kw):
        nonlocal backend
        if backend is None or kw:
            backend = await make_backend(**kw)
        pod = await backend.create("python")
        return await backend.wait_ready(pod, 30)

    return make

"""Helpers for the Kubernetes backend tests (polling with a deadline, pool-like fill)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kcr_kernels.backends.kubernetes import KubernetesBackend


async def eventually(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll an (a)sync predicate until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def fill(backend: KubernetesBackend, language: str, target: int) -> list:
    """What the pool does for a cluster-wide target: create the deficit, wait ready."""
    pods = [await backend.create(language) for _ in range(backend.warm_deficit(language, target))]
    return await asyncio.gather(*(backend.wait_ready(p, 30) for p in pods))

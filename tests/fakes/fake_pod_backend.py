"""FakePodBackend: an in-memory PodBackend double for the pool's logic tests.

Pods are plain :class:`Pod` objects; "starting" one takes ``start_delay``
seconds of asyncio sleep. Knobs: ``fail_starts`` (the next N starts raise
PodStartError), ``hang`` (starts never finish, so wait_ready times out),
``reject_claims`` (the next N claims lose to "another replica"). It records
what the pool did: ``created``, ``deleted``, ``claimed`` and the peak number
of concurrent starts.
"""

from __future__ import annotations

import asyncio
import itertools

from kcr_kernels.backends.base import Pod, PodBackend, PodStartError


class FakePodBackend(PodBackend):
    """In-memory pods; see the module docstring for the knobs."""

    name = "fake"

    def __init__(self, start_delay: float = 0.0) -> None:
        self.start_delay = start_delay
        self.fail_starts = 0
        self.hang = False
        self.reject_claims = 0
        self.started = False
        self.pods: dict[str, Pod] = {}
        self.dead: set[str] = set()
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.claimed: list[str] = []
        self.starting = 0
        self.peak_starting = 0
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.started = True

    async def create(self, language: str) -> Pod:
        pod = Pod(name=f"fake-{language}-{next(self._ids)}", language=language, token="t")
        self.pods[pod.name] = pod
        self.created.append(pod.name)
        return pod

    async def wait_ready(self, pod: Pod, timeout: float) -> Pod:
        self.starting += 1
        self.peak_starting = max(self.peak_starting, self.starting)
        try:
            if self.fail_starts > 0:
                self.fail_starts -= 1
                await asyncio.sleep(0)
                raise PodStartError(f"fake start failure for {pod.name}")
            delay = 3600 if self.hang else self.start_delay
            try:
                await asyncio.wait_for(asyncio.sleep(delay), timeout)
            except TimeoutError:
                raise PodStartError(f"{pod.name} not ready after {timeout:g} s")
        except BaseException:
            await self.delete(pod)
            raise
        finally:
            self.starting -= 1
        pod.url = f"http://fake/{pod.name}"
        return pod

    async def claim(self, pod: Pod, kernel_id: str) -> bool:
        if self.reject_claims > 0:
            self.reject_claims -= 1
            return False
        self.claimed.append(pod.name)
        pod.kernel_id = kernel_id
        return True

    async def delete(self, pod: Pod) -> None:
        if self.pods.pop(pod.name, None) is not None:
            self.deleted.append(pod.name)

    async def alive(self, pod: Pod) -> bool:
        return pod.name in self.pods and pod.name not in self.dead

    async def healthy(self, pod: Pod, timeout: float = 5.0) -> bool:
        return await self.alive(pod)

    async def list(self, language: str | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if language in (None, p.language)]

    def kill(self, pod: Pod) -> None:
        """Make ``pod`` dead, as if its runner crashed."""
        self.dead.add(pod.name)

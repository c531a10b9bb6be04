"""Per-language warm pools of pods.

A kernel takes a warm pod in O(1) and gives it back on shutdown, when the pod
is destroyed: pods that ran user code are never reused. See :class:`PodPool`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backends.base import Pod, PodBackend, PodStartError

#: Backoff after a failed refill: 0.5 s, doubling, at most this many seconds.
MAX_BACKOFF = 30.0


class UnknownLanguage(LookupError):
    """No pool is configured for the requested language."""


class PoolExhausted(RuntimeError):
    """The language is at its ``max`` pod count and every pod is leased."""


@dataclass
class PoolConfig:
    """Pool size for one language: ``warm`` pods kept ready, at most ``max``
    pods in total (warm + starting + leased; ``0`` = unlimited)."""

    language: str
    warm: int = 2
    max: int = 0


@dataclass
class _LanguagePool:
    config: PoolConfig
    warm: collections.deque = field(default_factory=collections.deque)
    leased: dict = field(default_factory=dict)  # pod name -> Pod
    starting: dict = field(default_factory=dict)  # pod name -> Pod (created, not ready)
    refilling: int = 0  # refill tasks alive (each brings one warm pod)
    cold: int = 0  # cold starts in progress for acquirers
    failures: int = 0  # consecutive refill failures (for the backoff)

    @property
    def total(self) -> int:
        return len(self.warm) + len(self.leased) + self.refilling + self.cold

    def room(self) -> int | None:
        """How many more pods may exist (``None`` = unlimited)."""
        if self.config.max <= 0:
            return None
        return max(self.config.max - self.total, 0)


class PodPool:
    """Warm pods per language on top of one :class:`PodBackend`.

    * :meth:`start` checks the backend's prerequisites (``backend.start()``,
      which may raise, e.g. ``SandboxUnavailable``) and returns; the pools
      fill in the background, at most ``refill_concurrency`` pod starts at a
      time over all languages, logging ``pool <lang>: n/target warm``.
      A failed start is logged and retried with exponential backoff
      (0.5 s doubling up to 30 s), never in a hot loop.
    * :meth:`acquire` pops a warm pod (O(1)), claims it through
      ``backend.claim`` (taking the next one when another replica won) and
      triggers a refill. With no warm pod it waits for one already starting
      or cold-starts one, all within ``timeout`` (default ``start_timeout``),
      raising :class:`PodStartError` on failure, :class:`UnknownLanguage` for
      an unconfigured language and :class:`PoolExhausted` when the language
      is at ``max`` with every pod leased.
    * :meth:`release` destroys the pod in the background and refills; a pod
      is never handed out twice.
    * Every ``health_interval`` seconds warm pods are checked
      (``backend.alive`` then ``backend.healthy``, the runner's ``/healthz``) and dead ones are
      replaced; leased pods are checked with ``backend.alive`` and a dead one
      is reported to ``on_pod_lost(pod)`` (if given) and destroyed. The
      gateway can report a leased pod it found dead with :meth:`lost`.
    * :meth:`stop` destroys every pod (warm, starting and leased); idempotent.
      It does not close the backend.
    """

    def __init__(
        self,
        backend: PodBackend,
        configs: list[PoolConfig],
        *,
        start_timeout: float = 30.0,
        refill_concurrency: int = 2,
        health_interval: float = 30.0,
        log: logging.Logger | None = None,
        on_pod_lost: Callable[[Pod], Awaitable[None] | None] | None = None,
    ) -> None:
        self.backend = backend
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.log = log or logging.getLogger("kcr_kernels.pool")
        self.on_pod_lost = on_pod_lost
        self._pools = {c.language: _LanguagePool(c) for c in configs}
        self._refill_slots = asyncio.Semaphore(max(refill_concurrency, 1))
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self._health_task: asyncio.Task | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the backend and start filling the pools in the background."""
        if self._started:
            return
        await self.backend.start()
        self._started = True
        for lp in self._pools.values():
            self._refill(lp)
        if self.health_interval > 0:
            self._health_task = asyncio.create_task(self._health_loop())

    async def wait_warm(self, timeout: float) -> None:
        """Wait until every language has its target warm count (or is at ``max``).

        Raises :class:`TimeoutError` naming the pools still short.
        """

        def full() -> bool:
            return all(
                len(lp.warm) >= lp.config.warm or lp.room() == 0 for lp in self._pools.values()
            )

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(full), timeout)
        except TimeoutError:
            raise TimeoutError(f"pools not warm after {timeout:g} s: {self.status()}")

    async def stop(self) -> None:
        """Destroy every pod (warm, starting and leased). Idempotent."""
        self._stopping = True
        tasks = [t for t in self._tasks if not t.done()]
        if self._health_task is not None:
            tasks.append(self._health_task)
        refills = [t for t in tasks if t.get_name().startswith("kcr-refill")]
        for task in refills + ([self._health_task] if self._health_task else []):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pods: list[Pod] = []
        for lp in self._pools.values():
            pods += list(lp.warm) + list(lp.leased.values()) + list(lp.starting.values())
            lp.warm.clear()
            lp.leased.clear()
            lp.starting.clear()
        await asyncio.gather(*(self._delete(p) for p in pods))
        await self._notify()

    def status(self) -> dict:
        """Per language: ``warm``, ``leased``, ``starting``, ``target``, ``max``."""
        return {
            lang: {
                "warm": len(lp.warm),
                "leased": len(lp.leased),
                "starting": lp.refilling + lp.cold,
                "target": lp.config.warm,
                "max": lp.config.max,
            }
            for lang, lp in self._pools.items()
        }

    # -- leasing -------------------------------------------------------------------------

    def _pool(self, language: str) -> _LanguagePool:
        try:
            return self._pools[language]
        except KeyError:
            known = ", ".join(sorted(self._pools)) or "none"
            raise UnknownLanguage(f"no pod pool for language {language!r} (configured: {known})")

    async def acquire(
        self,
        language: str,
        kernel_id: str,
        timeout: float | None = None,
    ) -> Pod:
        """Lease a pod for ``kernel_id``: warm if possible, else a cold start."""
        if self._stopping:
            raise PodStartError(f"cannot start a {language} pod: the pod pool is shutting down")
        lp = self._pool(language)
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            while lp.warm:
                pod = lp.warm.popleft()
                if not await self.backend.alive(pod):
                    self.log.info("pool %s: warm pod %s is dead, skipping it", language, pod.name)
                    self._spawn(self._delete(pod), "kcr-delete")
                    continue
                if await self.backend.claim(pod, kernel_id):
                    return self._lease(lp, pod, kernel_id)
                # Another gateway replica claimed it first: not ours any more.
            room = lp.room()
            remaining = deadline - time.monotonic()
            if room == 0:
                if lp.refilling == 0 and lp.cold == 0:
                    raise PoolExhausted(
                        f"all {lp.config.max} {language} pods are in use (pool max reached); "
                        "shut down an idle kernel or raise the pool's max"
                    )
                # A pod is on its way: wait for it rather than exceed max.
                if remaining <= 0 or not await self._wait_for_warm(lp, remaining):
                    raise PodStartError(
                        f"no {language} pod became free within {timeout:g} s "
                        f"(pool at its max of {lp.config.max})"
                    )
                continue
            return await self._cold_start(lp, kernel_id, max(remaining, 0.0), timeout)

    async def _cold_start(
        self, lp: _LanguagePool, kernel_id: str, remaining: float, budget: float
    ) -> Pod:
        language = lp.config.language
        self.log.info("pool %s: no warm pod, cold-starting one for kernel %s", language, kernel_id)
        lp.cold += 1
        try:
            pod = await self._start_pod(lp, remaining)
        except PodStartError as e:
            raise PodStartError(
                f"no warm {language} pod and a cold start failed within {budget:g} s: {e}"
            )
        finally:
            lp.cold -= 1
            self._refill(lp)
        if self._stopping or not await self.backend.claim(pod, kernel_id):
            self._spawn(self._delete(pod), "kcr-delete")
            raise PodStartError(f"the cold-started {language} pod {pod.name} was lost")
        return self._lease(lp, pod, kernel_id)

    def _lease(self, lp: _LanguagePool, pod: Pod, kernel_id: str) -> Pod:
        pod.kernel_id = kernel_id
        lp.leased[pod.name] = pod
        self.log.info(
            "pool %s: pod %s leased to kernel %s", lp.config.language, pod.name, kernel_id
        )
        self._refill(lp)
        return pod

    async def release(self, pod: Pod) -> None:
        """Give a leased pod back: it is destroyed (in the background), never reused."""
        lp = self._pools.get(pod.language)
        if lp is not None:
            lp.leased.pop(pod.name, None)
            with contextlib.suppress(ValueError):
                lp.warm.remove(pod)
        self._spawn(self._delete(pod), "kcr-delete")
        if lp is not None:
            self._refill(lp)

    async def lost(self, pod: Pod) -> None:
        """The gateway found a leased pod dead: forget and destroy it, then refill."""
        self.log.warning("pool %s: pod %s (kernel %s) lost", pod.language, pod.name, pod.kernel_id)
        await self.release(pod)

    # -- refill --------------------------------------------------------------------------

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _refill(self, lp: _LanguagePool) -> None:
        """Start as many refill tasks as the warm target and ``max`` allow."""
        if not self._started or self._stopping:
            return
        need = lp.config.warm - len(lp.warm) - lp.refilling
        room = lp.room()
        if room is not None:
            need = min(need, room)
        for _ in range(max(need, 0)):
            lp.refilling += 1
            self._spawn(self._refill_one(lp), f"kcr-refill-{lp.config.language}")

    async def _refill_one(self, lp: _LanguagePool) -> None:
        language = lp.config.language
        try:
            while not self._stopping:
                async with self._refill_slots:
                    if self._stopping:
                        return
                    try:
                        pod = await self._start_pod(lp, self.start_timeout)
                    except PodStartError as e:
                        lp.failures += 1
                        error = e
                    else:
                        lp.failures = 0
                        lp.warm.append(pod)
                        self.log.info("pool %s: %d/%d warm", language, len(lp.warm), lp.config.warm)
                        await self._notify()
                        return
                backoff = min(0.5 * 2 ** (lp.failures - 1), MAX_BACKOFF)
                self.log.error(
                    "pool %s: could not start a warm pod (attempt %d, retrying in %.1f s): %s",
                    language,
                    lp.failures,
                    backoff,
                    error,
                )
                await asyncio.sleep(backoff)
        finally:
            lp.refilling -= 1

    async def _start_pod(self, lp: _LanguagePool, seconds: float) -> Pod:
        """Create one pod and wait until it is ready; tracked for :meth:`stop`."""
        language = lp.config.language
        try:
            pod = await self.backend.create(language)
        except PodStartError:
            raise
        except Exception as e:
            raise PodStartError(f"could not create a {language} pod: {e}")
        lp.starting[pod.name] = pod
        try:
            return await self.backend.wait_ready(pod, seconds)
        except PodStartError:
            await asyncio.shield(self._delete(pod))  # wait_ready should have; make sure
            raise
        except Exception as e:
            await asyncio.shield(self._delete(pod))
            raise PodStartError(f"{language} pod {pod.name} failed to start: {e!r}")
        except BaseException:  # cancelled (pool stopping, acquire timed out)
            await asyncio.shield(self._delete(pod))
            raise
        finally:
            lp.starting.pop(pod.name, None)

    async def _wait_for_warm(self, lp: _LanguagePool, seconds: float) -> bool:
        def ready() -> bool:
            return bool(lp.warm) or (lp.refilling == 0 and lp.cold == 0) or self._stopping

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), seconds)
        except TimeoutError:
            return False
        return bool(lp.warm)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _delete(self, pod: Pod) -> None:
        try:
            await self.backend.delete(pod)
        except Exception:
            self.log.exception("pool %s: could not delete pod %s", pod.language, pod.name)

    # -- health ----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.health_interval)
            try:
                await self.check_health()
            except Exception:
                self.log.exception("pool health check failed")

    async def check_health(self) -> None:
        """One health pass: replace dead warm pods, report dead leased pods."""
        for lp in self._pools.values():
            for pod in list(lp.warm):
                if await self.backend.alive(pod) and await self.backend.healthy(pod):
                    continue
                if pod in lp.warm:
                    lp.warm.remove(pod)
                    self.log.warning(
                        "pool %s: warm pod %s is dead, replacing it", pod.language, pod.name
                    )
                    self._spawn(self._delete(pod), "kcr-delete")
            for pod in list(lp.leased.values()):
                if await self.backend.alive(pod) or pod.name not in lp.leased:
                    continue
                await self.lost(pod)
                if self.on_pod_lost is not None:
                    result = self.on_pod_lost(pod)
                    if asyncio.iscoroutine(result):
                        await result
            self._refill(lp)
        await self._notify()

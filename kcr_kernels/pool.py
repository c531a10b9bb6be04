"""Per-language warm pools of pods.

A kernel takes a warm pod in O(1) and gives it back on shutdown, when the pod
is destroyed: pods that ran user code are never reused. See :class:`PodPool`;
with a backend whose pods are shared by several gateway replicas (Kubernetes)
the pool sizes are cluster-wide (see "Shared backends" there).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .backends.base import Pod, PodBackend, PodStartError

#: Backoff after a failed refill: 0.5 s, doubling, at most this many seconds.
MAX_BACKOFF = 30.0

#: What a backend offers when its warm pods are shared by every gateway replica.
SHARED_BACKEND_METHODS = ("warm_pods", "warm_deficit", "counts", "reap")

#: How often a shared pool re-reads the backend's pod cache while it waits for a pod.
_SHARED_POLL = 0.1


def is_shared_backend(backend: PodBackend) -> bool:
    """True when ``backend`` has every method of :data:`SHARED_BACKEND_METHODS`."""
    return all(callable(getattr(backend, m, None)) for m in SHARED_BACKEND_METHODS)


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
    # Shared backends only:
    claiming: set = field(default_factory=set)  # pod names a local acquirer is claiming
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # run a refill pass now
    retry_at: float = 0.0  # monotonic time before which no refill is tried (backoff)

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

    Shared backends. A backend is *shared* when it has ``warm_pods``,
    ``warm_deficit``, ``counts`` and ``reap`` (duck-typed, see
    :func:`is_shared_backend`; :class:`~kcr_kernels.backends.kubernetes.KubernetesBackend`
    is): its warm pods belong to no replica and any replica may lease them.
    Then ``warm`` and ``max`` of each :class:`PoolConfig` are **cluster-wide**:

    * :meth:`acquire` walks ``await backend.warm_pods(lang)`` (ready, unclaimed
      pods of every replica, oldest first) and claims the first it can; a lost
      claim (``claim() == False``: another replica or a reaper was first) moves
      on to the next. Pods another acquirer of this pool is claiming are
      skipped. With none left it cold-starts a pod and claims it (if another
      replica takes it first, it tries again) until ``timeout``; at a
      cluster-wide ``max`` with no pod starting anywhere it raises
      :class:`PoolExhausted`.
    * Refill creates ``backend.warm_deficit(lang, warm, max)`` pods (minus
      the ones this replica created that the backend has not seen yet) on
      every ``refill_interval`` tick, after every acquire and release, and
      when one of its starts ends; still at most ``refill_concurrency`` starts
      at a time. :meth:`start` runs the first pass before it returns. Two
      replicas may overshoot the target for a moment; the reaper trims it.
    * Every ``reap_interval`` seconds :meth:`reap` calls
      ``backend.reap(live, {lang: warm})`` with ``live`` = ``await
      live_kernels()`` (the kernel ids of the registry) plus this pool's own
      leases: leased pods of kernels gone from the registry, failed pods,
      pods that never got ready and warm pods beyond the target are deleted.
      Without ``live_kernels`` no leased pod is ever reaped; when
      ``live_kernels`` fails the pass is skipped. A pass also deletes a leased
      pod of a kernel that this pool has leased *another* pod to (its old
      pod, left behind by a replica that died), once seen on two passes in a
      row.
    * :meth:`status` reports the cluster-wide ``warm``, ``starting`` and
      ``leased`` counts (``backend.counts``), plus ``leased_here`` (this
      replica's leases) and ``"scope": "cluster"``.
    * :meth:`wait_warm` waits for the cluster-wide warm count.
    * :meth:`stop` deletes only this replica's leased and starting pods: the
      warm pods stay for the other replicas (the reaper trims what is too many).
    * The health pass checks this replica's leased pods; dead warm pods are
      the backend's and the reaper's business (failed pods are reaped).
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
        live_kernels: Callable[[], Awaitable[Iterable[str]]] | None = None,
        refill_interval: float = 2.0,
        reap_interval: float = 30.0,
        prepare: Callable[[Pod], Awaitable[None]] | None = None,
    ) -> None:
        self.backend = backend
        # Called with each pod this replica started, once it is ready and before it counts
        # as warm (the gateway opens the runner channel there, off the start path). A pod
        # whose preparation fails is destroyed like one that did not start.
        self.prepare = prepare
        self.shared = is_shared_backend(backend)
        self.live_kernels = live_kernels
        self.refill_interval = refill_interval
        self.reap_interval = reap_interval
        self.refill_concurrency = max(refill_concurrency, 1)
        self._superseded: dict[str, str] = {}  # pod name -> kernel id, seen on the last reap
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.log = log or logging.getLogger("kcr_kernels.pool")
        self.on_pod_lost = on_pod_lost
        self._pools = {c.language: _LanguagePool(c) for c in configs}
        self._refill_slots = asyncio.Semaphore(max(refill_concurrency, 1))
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self._health_task: asyncio.Task | None = None
        self._reap_task: asyncio.Task | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the backend and start filling the pools in the background."""
        if self._started:
            return
        await self.backend.start()
        self._started = True
        if self.shared:
            for lp in self._pools.values():
                await self._shared_refill_pass(lp)
                self._spawn(self._shared_refill_loop(lp), f"kcr-refill-{lp.config.language}")
            if self.reap_interval > 0:
                self._reap_task = asyncio.create_task(self._reap_loop())
        else:
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

        if self.shared:
            deadline = time.monotonic() + timeout
            while not all(self._shared_full(lp) for lp in self._pools.values()):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"pools not warm after {timeout:g} s: {self.status()}")
                await self._poll(min(_SHARED_POLL, deadline - time.monotonic()))
            return
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(full), timeout)
        except TimeoutError:
            raise TimeoutError(f"pools not warm after {timeout:g} s: {self.status()}")

    async def stop(self) -> None:
        """Destroy every pod (warm, starting and leased). Idempotent."""
        self._stopping = True
        tasks = [t for t in self._tasks if not t.done()]
        loops = [t for t in (self._health_task, self._reap_task) if t is not None]
        tasks += loops
        refills = [t for t in tasks if t.get_name().startswith("kcr-refill")]
        for task in refills + loops:
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
        """Per language: ``warm``, ``leased``, ``starting``, ``target``, ``max``.

        For a shared backend the first three are cluster-wide, with
        ``leased_here`` (this replica's leases) and ``scope: "cluster"``.
        """
        if self.shared:
            out = {}
            for lang, lp in self._pools.items():
                counts = self.backend.counts(lang)
                out[lang] = {
                    "warm": counts["warm"],
                    "leased": counts["leased"],
                    "starting": counts["starting"],
                    "target": lp.config.warm,
                    "max": lp.config.max,
                    "leased_here": len(lp.leased),
                    "scope": "cluster",
                }
            return out
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
        if self.shared:
            return await self._shared_acquire(lp, kernel_id, timeout)
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
        if self.shared:
            lp.wake.set()  # the language's refill loop runs a pass
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
            pod = await self.backend.wait_ready(pod, seconds)
            if self.prepare is not None:
                await asyncio.wait_for(self.prepare(pod), seconds)
            return pod
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

    # -- shared backends: acquire ---------------------------------------------------------

    async def _shared_acquire(self, lp: _LanguagePool, kernel_id: str, timeout: float) -> Pod:
        language = lp.config.language
        deadline = time.monotonic() + timeout
        while True:
            pod = await self._claim_warm(lp, kernel_id)
            if pod is not None:
                return self._lease(lp, pod, kernel_id)
            if self._stopping:
                raise PodStartError(f"cannot start a {language} pod: the pod pool is shutting down")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PodStartError(
                    f"no {language} pod could be leased within {timeout:g} s: every warm pod "
                    "was taken by other kernels and no cold start succeeded in time"
                )
            counts = self.backend.counts(language)
            if lp.config.max > 0 and sum(counts.values()) >= lp.config.max:
                if counts["leased"] >= lp.config.max:
                    raise PoolExhausted(
                        f"all {lp.config.max} {language} pods are in use (pool max reached "
                        "across all gateway replicas); shut down an idle kernel or raise "
                        "the pool's max"
                    )
                # A pod is on its way (or being claimed): wait for it rather than exceed max.
                await self._poll(min(_SHARED_POLL, remaining))
                continue
            pod = await self._shared_cold_start(lp, kernel_id, remaining, timeout)
            if pod is not None:
                return self._lease(lp, pod, kernel_id)
            # Another replica claimed the pod we started: look again.

    async def _claim_warm(self, lp: _LanguagePool, kernel_id: str) -> Pod | None:
        """Claim the first cluster-wide warm pod nobody else here is claiming."""
        for pod in await self.backend.warm_pods(lp.config.language):
            if pod.name in lp.claiming:
                continue
            lp.claiming.add(pod.name)
            try:
                if await self.backend.claim(pod, kernel_id):
                    return pod
            except Exception as e:
                self.log.warning("pool %s: claiming pod %s failed: %s", pod.language, pod.name, e)
            finally:
                lp.claiming.discard(pod.name)
        return None

    async def _shared_cold_start(
        self, lp: _LanguagePool, kernel_id: str, remaining: float, budget: float
    ) -> Pod | None:
        """Start a pod and claim it; None when another replica claimed it first."""
        language = lp.config.language
        self.log.info("pool %s: no warm pod, cold-starting one for kernel %s", language, kernel_id)
        lp.cold += 1
        pod: Pod | None = None
        try:
            try:
                pod = await self.backend.create(language)
            except PodStartError:
                raise
            except Exception as e:
                raise PodStartError(f"could not create a {language} pod: {e}")
            # Keep this pool's other acquirers off it; other replicas may still win it.
            lp.claiming.add(pod.name)
            lp.starting[pod.name] = pod
            try:
                await self.backend.wait_ready(pod, remaining)
            except PodStartError:
                await asyncio.shield(self._delete(pod))
                raise
            except Exception as e:
                await asyncio.shield(self._delete(pod))
                raise PodStartError(f"{language} pod {pod.name} failed to start: {e!r}")
            except BaseException:
                await asyncio.shield(self._delete(pod))
                raise
            finally:
                lp.starting.pop(pod.name, None)
            if self._stopping:
                self._spawn(self._delete(pod), "kcr-delete")
                raise PodStartError(f"cannot start a {language} pod: the pod pool is shutting down")
            return pod if await self.backend.claim(pod, kernel_id) else None
        except PodStartError as e:
            raise PodStartError(
                f"no warm {language} pod and a cold start failed within {budget:g} s: {e}"
            )
        finally:
            lp.cold -= 1
            if pod is not None:
                lp.claiming.discard(pod.name)
            self._refill(lp)

    def _shared_full(self, lp: _LanguagePool) -> bool:
        counts = self.backend.counts(lp.config.language)
        at_max = lp.config.max > 0 and sum(counts.values()) >= lp.config.max
        return counts["warm"] >= lp.config.warm or at_max

    async def _poll(self, seconds: float) -> None:
        """Wait ``seconds`` or until this pool changes, whichever comes first."""
        if seconds <= 0:
            return
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass

    # -- shared backends: refill -------------------------------------------------------------

    async def _shared_refill_loop(self, lp: _LanguagePool) -> None:
        """Run a refill pass on every tick, and whenever :meth:`_refill` asks for one."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lp.wake.wait(), self.refill_interval)
            lp.wake.clear()
            backoff = lp.retry_at - time.monotonic()
            if backoff > 0:
                await asyncio.sleep(backoff)
            try:
                await self._shared_refill_pass(lp)
            except Exception:
                self.log.exception("pool %s: refill pass failed", lp.config.language)

    async def _shared_refill_pass(self, lp: _LanguagePool) -> None:
        """Create pods while the cluster lacks warm ones and a start slot is free."""
        language = lp.config.language
        while not self._stopping and time.monotonic() >= lp.retry_at:
            if self._refill_slots.locked() or await self._shared_need(lp) <= 0:
                return
            await self._refill_slots.acquire()
            try:
                pod = await self.backend.create(language)
            except Exception as e:
                self._refill_slots.release()
                self._refill_failed(lp, e)
                return
            lp.starting[pod.name] = pod
            lp.refilling += 1
            self._spawn(self._shared_warm_up(lp, pod), f"kcr-refill-warmup-{language}")

    async def _shared_need(self, lp: _LanguagePool) -> int:
        """The cluster's warm deficit, less this replica's pods it does not count yet."""
        language = lp.config.language
        deficit = self.backend.warm_deficit(language, lp.config.warm, lp.config.max or None)
        # A pod this replica created counts once the backend has seen it (its watch).
        unseen = 0
        for pod in list(lp.starting.values()):
            if not await self.backend.alive(pod):
                unseen += 1
        return deficit - unseen

    async def _shared_warm_up(self, lp: _LanguagePool, pod: Pod) -> None:
        """Wait until a refill pod is ready; it is then any replica's to claim."""
        language = lp.config.language
        try:
            await self.backend.wait_ready(pod, self.start_timeout)
        except PodStartError as e:
            if pod.kernel_id is None:  # else another replica leased it meanwhile: not ours
                await asyncio.shield(self._delete(pod))  # wait_ready should have; make sure
                self._refill_failed(lp, e)
        except Exception as e:
            await asyncio.shield(self._delete(pod))
            self._refill_failed(lp, PodStartError(f"{language} pod {pod.name}: {e!r}"))
        except BaseException:  # cancelled: the pool is stopping
            await asyncio.shield(self._delete(pod))
            raise
        else:
            lp.failures = 0
            counts = self.backend.counts(language)
            self.log.info(
                "pool %s: %d/%d warm across replicas", language, counts["warm"], lp.config.warm
            )
        finally:
            lp.starting.pop(pod.name, None)
            lp.refilling -= 1
            self._refill_slots.release()
            for other in self._pools.values():  # a start slot is free for every language
                other.wake.set()
            await self._notify()

    def _refill_failed(self, lp: _LanguagePool, error: Exception) -> None:
        lp.failures += 1
        backoff = min(0.5 * 2 ** (lp.failures - 1), MAX_BACKOFF)
        lp.retry_at = time.monotonic() + backoff
        self.log.error(
            "pool %s: could not start a warm pod (attempt %d, retrying in %.1f s): %s",
            lp.config.language,
            lp.failures,
            backoff,
            error,
        )

    # -- shared backends: reaper ---------------------------------------------------------------

    async def _reap_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:
                self.log.exception("pool reaper pass failed")

    async def reap(self) -> list[str]:
        """One reaper pass (shared backends only); returns the names of the pods deleted.

        See "Shared backends" in the class docstring for what is deleted.
        """
        if not self.shared:
            return []
        own = {
            pod.kernel_id
            for lp in self._pools.values()
            for pod in lp.leased.values()
            if pod.kernel_id
        }
        if self.live_kernels is None:
            # Nobody tells us which kernels exist: never reap a leased pod.
            live = {pod.kernel_id for pod in await self.backend.list() if pod.kernel_id}
        else:
            try:
                live = set(await self.live_kernels())
            except Exception as e:
                self.log.warning("pool reaper: kernel registry unavailable, pass skipped: %s", e)
                return []
        targets = {lang: lp.config.warm for lang, lp in self._pools.items()}
        deleted = list(await self.backend.reap(live | own, targets))
        deleted += await self._reap_superseded()
        if deleted:
            for lp in self._pools.values():
                self._refill(lp)
        return deleted

    async def _reap_superseded(self) -> list[str]:
        """Delete old pods of kernels this replica has since leased another pod to.

        The kernel's lease in the registry guarantees that only its holder
        drives it, so a second pod labelled with one of our kernels is one a
        dead replica left behind. Only pods seen so on two passes in a row go,
        so a replica that just lost a kernel's lease has time to notice.
        """
        mine: dict[str, str] = {}
        for lp in self._pools.values():
            for pod in lp.leased.values():
                if pod.kernel_id:
                    mine[pod.kernel_id] = pod.name
        own_names = set(mine.values())
        suspects = {
            pod.name: pod
            for pod in await self.backend.list()
            if pod.kernel_id in mine
            and pod.name not in own_names
            and pod.meta.get("state") == "leased"
        }
        doomed = [p for n, p in suspects.items() if self._superseded.get(n) == p.kernel_id]
        self._superseded = {n: p.kernel_id for n, p in suspects.items()}
        deleted = []
        for pod in doomed:
            self.log.info(
                "pool %s: deleting pod %s, left to kernel %s (now on %s) by a gone replica",
                pod.language,
                pod.name,
                pod.kernel_id,
                mine[pod.kernel_id],
            )
            await self._delete(pod)
            self._superseded.pop(pod.name, None)
            deleted.append(pod.name)
        return deleted

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

"""The gateway's kernel manager: kernels are pods leased from the warm pool.

jupyter_server's kernel handlers call this manager through the same methods
they call on its ``MappingKernelManager`` (``start_kernel``, ``kernel_model``,
``list_kernels``, ``shutdown_kernel``, ``interrupt_kernel``,
``restart_kernel``, ``get_kernel``), so its REST handlers are reused as they
are. There is no ZMQ here: each kernel is a :class:`KernelSession` in front of
one runner connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from jupyter_client.kernelspec import NoSuchKernel
from tornado import web
from traitlets import Bool, Dict, Float, Instance, Integer, Unicode
from traitlets.config import LoggingConfigurable

from kcr_kernels.backends.base import Pod, PodStartError
from kcr_kernels.kernelspecs import KCRKernelSpecManager, spec_language
from kcr_kernels.pool import PodPool, PoolExhausted, UnknownLanguage
from kcr_kernels.runner_client import RunnerClient, RunnerError
from kcr_kernels.session import KernelSession

from . import metrics

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime(ISO_FORMAT)


def utcnow() -> datetime:
    return datetime.now(UTC)


class RemoteKernel(LoggingConfigurable):
    """One kernel: a :class:`KernelSession` plus the pod currently behind it.

    It is the ``parent`` of every WebSocket connection to the kernel (the
    role a ``KernelManager`` plays in jupyter_server).
    """

    kernel_id = Unicode()
    kernel_name = Unicode()
    language = Unicode()
    username = Unicode("")
    env = Dict()
    connections = Integer(0)
    session: KernelSession
    pod: Pod | None = None
    runner: RunnerClient | None = None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.last_activity = utcnow()
        self.lock = asyncio.Lock()
        self.pod_lost = False

    @property
    def execution_state(self) -> str:
        if self.pod_lost:
            return "dead"
        return self.session.execution_state

    def touch(self) -> None:
        self.last_activity = utcnow()

    def model(self) -> dict:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "last_activity": iso(self.last_activity),
            "execution_state": self.execution_state,
            "connections": self.connections,
        }


class KCRKernelManager(LoggingConfigurable):
    """Starts, restarts, interrupts and removes kernels on pooled pods.

    Contract:

    * :meth:`start_kernel` leases a warm pod for the kernelspec's language,
      connects to its runner, adds the request's environment, and returns the
      new kernel id; unknown kernelspecs are a 404, an exhausted pool a 503,
      a pod that will not start a 503 with the reason.
    * :meth:`restart_kernel` puts the kernel on a fresh pod (its old pod is
      destroyed, never reused); connected WebSockets keep working.
    * :meth:`shutdown_kernel` destroys the pod and forgets the kernel.
    * Unknown kernel ids are a 404 with a JSON message.
    """

    pool = Instance(PodPool)
    kernel_spec_manager = Instance(KCRKernelSpecManager)
    default_kernel_name = Unicode(
        "kcr-python", config=True, help="Kernelspec used when a start request names none."
    )
    kernel_info_timeout = Float(60.0, config=True, help="Seconds a client waits for kernel_info.")
    start_timeout = Float(
        30.0, config=True, help="Seconds a kernel start may wait for a pod when the pool is empty."
    )
    cull_idle_timeout = Integer(
        0,
        config=True,
        help="Shut down kernels idle for this many seconds (0: never).",
    )
    cull_interval = Integer(60, config=True, help="Seconds between checks for idle kernels.")
    cull_connected = Bool(
        False, config=True, help="Also cull idle kernels that still have a WebSocket open."
    )
    cull_busy = Bool(False, config=True, help="Also cull kernels that are busy.")

    def __init__(self, **kw):
        super().__init__(**kw)
        self._kernels: dict[str, RemoteKernel] = {}
        self._kernel_info: dict[str, dict] = {}
        self._culler: asyncio.Task | None = None

    # -- lookups ------------------------------------------------------------

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    def __len__(self) -> int:
        return len(self._kernels)

    def list_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def get_kernel(self, kernel_id: str) -> RemoteKernel:
        self._check_kernel_id(kernel_id)
        return self._kernels[kernel_id]

    def _check_kernel_id(self, kernel_id: str) -> None:
        if kernel_id not in self._kernels:
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")

    def kernel_model(self, kernel_id: str) -> dict:
        return self.get_kernel(kernel_id).model()

    def list_kernels(self) -> list[dict]:
        return [k.model() for k in self._kernels.values()]

    def kernels_of(self, username: str) -> int:
        return sum(1 for k in self._kernels.values() if k.username == username)

    # -- lifecycle ------------------------------------------------------------

    async def start_kernel(
        self,
        kernel_name: str | None = None,
        path: str | None = None,
        kernel_id: str | None = None,
        env: dict | None = None,
        **_kw,
    ) -> str:
        kernel_name = kernel_name or self.default_kernel_name
        language = self._language_of(kernel_name)
        kernel_id = kernel_id or str(uuid.uuid4())
        if kernel_id in self._kernels:
            raise web.HTTPError(409, f"Kernel {kernel_id} already exists")
        env = dict(env or {})
        timeout = _launch_timeout(env, self.start_timeout)
        started = time.perf_counter()
        kernel = RemoteKernel(
            parent=self,
            log=self.log,
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            language=language,
            username=env.get("KERNEL_USERNAME", ""),
            env=env,
        )
        kernel.session = self._new_session(kernel)
        async with kernel.lock:
            await self._put_on_new_pod(kernel, timeout)
        self._kernels[kernel_id] = kernel
        elapsed = time.perf_counter() - started
        metrics.KERNEL_STARTS.labels(language=language).inc()
        metrics.KERNEL_START_SECONDS.labels(language=language).observe(elapsed)
        self.log.info("Kernel %s started (%s) in %.1f ms", kernel_id, kernel_name, elapsed * 1e3)
        return kernel_id

    def _language_of(self, kernel_name: str) -> str:
        try:
            spec = self.kernel_spec_manager.get_kernel_spec(kernel_name)
        except NoSuchKernel:
            raise web.HTTPError(404, f"No such kernel spec: {kernel_name}")
        return spec.metadata.get("kcr", {}).get("language") or spec_language(
            kernel_name, spec.language
        )

    def _new_session(self, kernel: RemoteKernel) -> KernelSession:
        async def on_shutdown(restart: bool) -> None:
            if restart:
                await self.restart_kernel(kernel.kernel_id)
            else:
                await self.shutdown_kernel(kernel.kernel_id)

        def on_activity(_msg_type: str) -> None:
            kernel.touch()

        async def before_request() -> None:
            if kernel.pod_lost or kernel.runner is None:
                await self._recover(kernel)

        def after_execute() -> None:
            kernel.touch()
            metrics.EXECUTES.labels(language=kernel.language).inc()

        return KernelSession(
            kernel.kernel_id,
            username=kernel.username or "kcr",
            on_shutdown=on_shutdown,
            on_activity=on_activity,
            before_request=before_request,
            after_execute=after_execute,
        )

    async def _put_on_new_pod(self, kernel: RemoteKernel, timeout: float) -> None:
        """Lease a pod, connect to its runner and put it behind the kernel's session."""
        try:
            pod = await self.pool.acquire(kernel.language, kernel.kernel_id, timeout=timeout)
        except UnknownLanguage:
            raise web.HTTPError(404, f"No pool serves language {kernel.language!r}")
        except PoolExhausted as e:
            raise web.HTTPError(503, f"No pod available for {kernel.language}: {e}")
        except PodStartError as e:
            raise web.HTTPError(503, f"The kernel's pod did not start: {e}")
        runner = RunnerClient(pod.url, pod.token, on_lost=lambda: self._on_pod_lost(kernel, pod))
        try:
            await runner.connect()
            if kernel.env:
                await runner.set_env({k: str(v) for k, v in kernel.env.items()})
            info = self._kernel_info.get(kernel.language)
            if info is None:
                info = self._kernel_info[kernel.language] = await runner.kernel_info()
            await kernel.session.attach_runner(runner, info)
        except RunnerError as e:
            runner.close()
            await self.pool.release(pod)
            raise web.HTTPError(503, f"The kernel's pod did not answer: {e}")
        kernel.pod, kernel.runner, kernel.pod_lost = pod, runner, False

    def _on_pod_lost(self, kernel: RemoteKernel, pod: Pod) -> None:
        if kernel.pod is not pod:
            return
        self.log.warning("Kernel %s lost its pod %s", kernel.kernel_id, pod.name)
        kernel.pod_lost = True
        kernel.session.set_state("dead")
        asyncio.ensure_future(self.pool.lost(pod))

    async def _recover(self, kernel: RemoteKernel) -> None:
        """Put a kernel whose pod died on a fresh pod before its next request."""
        async with kernel.lock:
            if not kernel.pod_lost and kernel.runner is not None:
                return
            old = kernel.pod
            kernel.session.detach_runner()
            await self._put_on_new_pod(kernel, self.start_timeout)
            if old is not None:
                asyncio.ensure_future(self.pool.release(old))
            kernel.session.publish(
                "stream",
                {
                    "name": "stderr",
                    "text": "[kcr] The kernel's pod stopped; the kernel continues on a fresh pod"
                    " (variables defined before were lost).\n",
                },
                kernel.session._last_parent,
            )

    async def restart_kernel(self, kernel_id: str, now: bool = False, **_kw) -> None:
        kernel = self.get_kernel(kernel_id)
        async with kernel.lock:
            session = kernel.session
            session.set_state("restarting")
            session.reset_queue("the kernel was restarted")
            old_runner, old_pod = session.detach_runner(), kernel.pod
            kernel.pod = kernel.runner = None
            if old_runner is not None:
                old_runner.close()
            if old_pod is not None:
                asyncio.ensure_future(self.pool.release(old_pod))
            await self._put_on_new_pod(kernel, self.start_timeout)
        kernel.touch()
        self.log.info("Kernel %s restarted on pod %s", kernel_id, kernel.pod.name)

    async def interrupt_kernel(self, kernel_id: str) -> None:
        kernel = self.get_kernel(kernel_id)
        result = await kernel.session.interrupt()
        if result.get("status") != "ok":
            raise web.HTTPError(500, result.get("evalue", "interrupt failed"))

    async def shutdown_kernel(
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        kernel = self._kernels.pop(kernel_id, None)
        if kernel is None:
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
        await kernel.session.close()
        if kernel.pod is not None:
            await self.pool.release(kernel.pod)
        self.log.info("Kernel %s shut down", kernel_id)

    async def shutdown_all(self, now: bool = False) -> None:
        await asyncio.gather(
            *(self.shutdown_kernel(k) for k in list(self._kernels)), return_exceptions=True
        )

    # -- culling --------------------------------------------------------------

    def start_culler(self) -> None:
        if self.cull_idle_timeout > 0 and self._culler is None:
            self.log.info(
                "Culling kernels idle for %ss (checked every %ss)",
                self.cull_idle_timeout,
                self.cull_interval,
            )
            self._culler = asyncio.create_task(self._cull_loop())

    def stop_culler(self) -> None:
        if self._culler is not None:
            self._culler.cancel()
            self._culler = None

    async def _cull_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cull_interval)
            await self.cull_idle_kernels()

    async def cull_idle_kernels(self) -> list[str]:
        """Shut down every kernel idle for longer than ``cull_idle_timeout``."""
        now = utcnow()
        culled = []
        for kernel in list(self._kernels.values()):
            idle_for = (now - kernel.last_activity).total_seconds()
            if idle_for < self.cull_idle_timeout:
                continue
            if kernel.connections and not self.cull_connected:
                continue
            if kernel.execution_state == "busy" and not self.cull_busy:
                continue
            self.log.warning(
                "Culling kernel %s (%s): idle for %.0fs",
                kernel.kernel_id,
                kernel.kernel_name,
                idle_for,
            )
            try:
                await self.shutdown_kernel(kernel.kernel_id)
                culled.append(kernel.kernel_id)
            except web.HTTPError:
                pass
        return culled


def _launch_timeout(env: dict, default: float) -> float:
    """``KERNEL_LAUNCH_TIMEOUT`` from the request (as Enterprise Gateway honours it)."""
    try:
        return float(env.get("KERNEL_LAUNCH_TIMEOUT", default))
    except (TypeError, ValueError):
        return default

"""The gateway's kernel manager: durable kernels on pods leased from the warm pool.

jupyter_server's kernel handlers call this manager through the methods they
call on its ``MappingKernelManager`` (``start_kernel``, ``kernel_model``,
``list_kernels``, ``shutdown_kernel``, ``interrupt_kernel``,
``restart_kernel``, ``get_kernel``), so its REST handlers are reused as they
are. There is no ZMQ here: each kernel is a :class:`KernelSession` in front of
one runner connection.

Durability (see the README's "Kernels that outlive their pod"):

* Every kernel has a record in the kernel store (the registry), shared by all
  gateway replicas and surviving gateway restarts.
* A replica may drive a kernel only while it holds the kernel's **lease** in
  the store; so a kernel is never attached to two pods at once.
* After a cell, once the kernel has been idle for ``checkpoint_delay``, its
  namespace is checkpointed into the store; it is also checkpointed before its
  pod is released on purpose (hibernation, hand-off, gateway shutdown).
* A kernel without a pod (hibernated, its pod lost, or never attached on this
  replica) gets a fresh pod on its next request, with its files and its last
  checkpoint restored.
* A replica that needs a kernel another replica holds asks for a **hand-off**
  (a second lease key the holder watches): the holder checkpoints, releases
  pod and lease, and the asker takes over.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from jupyter_client.kernelspec import NoSuchKernel
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Enum, Float, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from kcr_kernels import checkpoint as checkpoints
from kcr_kernels.backends.base import Pod, PodStartError
from kcr_kernels.kernelspecs import KCRKernelSpecManager, spec_language
from kcr_kernels.pool import PodPool, PoolExhausted, UnknownLanguage
from kcr_kernels.runner_client import RunnerClient, RunnerError
from kcr_kernels.session import KernelSession
from kcr_kernels.stores import KernelStore, StoreError
from kcr_kernels.workspace_sync import RestoreFailed

from . import metrics

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
HANDOFF = ".handoff"
INTERRUPT = ".interrupt"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime(ISO_FORMAT)


class RemoteKernel(LoggingConfigurable):
    """One kernel as this replica knows it: a session, and maybe a pod behind it.

    It is the ``parent`` of every WebSocket connection to the kernel (the
    role a ``KernelManager`` plays in jupyter_server). ``attached`` means this
    replica holds the kernel's lease and a live pod; ``hibernated`` means its
    state is in the store and no pod runs it.
    """

    kernel_id = Unicode()
    kernel_name = Unicode()
    language = Unicode()
    username = Unicode("")
    env = Dict()
    connections = Integer(0)
    created = Float()
    session: KernelSession
    pod: Pod | None = None
    runner: RunnerClient | None = None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.last_activity = time.time()
        self.lock = asyncio.Lock()
        self.checkpoint_lock = asyncio.Lock()
        self.lost_reason: str | None = None  # set when the pod died under us
        self.hibernated = False
        self.dirty = False  # code ran since the last checkpoint
        self.checkpoint_timer: asyncio.TimerHandle | None = None
        self.interrupts_seen: set[str] = set()
        self.last_checkpoint: float | None = None  # when its state was last saved
        self.file_sync: asyncio.Future | None = None  # the last cell's file sync, if running
        self.synced_workspace: str | None = None  # runner's workspace fingerprint when synced

    @property
    def attached(self) -> bool:
        return self.pod is not None and self.lost_reason is None

    @property
    def execution_state(self) -> str:
        if self.hibernated and self.pod is None:
            return "hibernated"
        if self.pod is None:
            return "idle"
        return self.session.execution_state

    def touch(self) -> None:
        self.last_activity = time.time()

    def model(self) -> dict:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "last_activity": iso(self.last_activity),
            "execution_state": self.execution_state,
            "connections": self.connections,
        }

    def record(self, state: str, owner: str) -> dict:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "language": self.language,
            "username": self.username,
            "env": self.env,
            "created": self.created,
            "last_activity": self.last_activity,
            "state": state,
            "owner": owner,
            "checkpointed": self.last_checkpoint,
        }


def model_from_record(record: dict) -> dict:
    return {
        "id": record["id"],
        "name": record.get("name", ""),
        "last_activity": iso(record.get("last_activity") or time.time()),
        "execution_state": "hibernated" if record.get("state") == "hibernated" else "idle",
        "connections": 0,
    }


class KCRKernelManager(LoggingConfigurable):
    """Starts, moves, hibernates, restarts and removes durable kernels.

    Contract:

    * :meth:`start_kernel` leases a warm pod for the kernelspec's language,
      connects to its runner, adds the request's environment, registers the
      kernel and returns its id; unknown kernelspecs are a 404, an exhausted
      pool a 503, a pod that will not start a 503 with the reason.
    * :meth:`adopt` makes a kernel known to this replica from the registry
      (404 if the registry has no such kernel); handlers call it first.
    * A request on a kernel without a pod puts it on a fresh pod with its
      files and last checkpoint (resume, recovery, hand-off).
    * :meth:`restart_kernel` puts the kernel on a fresh pod with its files
      but *without* its state (the checkpoint is deleted); connected
      WebSockets keep working.
    * :meth:`shutdown_kernel` destroys the pod and deletes the kernel's
      record, state and files everywhere.
    """

    pool = Instance(PodPool)
    kernel_spec_manager = Instance(KCRKernelSpecManager)
    store = Instance(KernelStore)
    files = AnyTrait(None, allow_none=True, help="A WorkspaceSync, or None for no file store.")
    default_kernel_name = Unicode("kcr-python", config=True, help="Kernelspec used by default.")
    kernel_info_timeout = Float(60.0, config=True, help="Seconds a client waits for kernel_info.")
    start_timeout = Float(
        30.0, config=True, help="Seconds a kernel start may wait for a pod when the pool is empty."
    )
    owner = Unicode(config=True, help="This replica's name in leases (default: host-pid-random).")

    @default("owner")
    def _owner_default(self) -> str:
        return os.environ.get(
            "KCR_REPLICA_ID", f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )

    lease_ttl = Float(15.0, config=True, help="Seconds a kernel lease lives without renewal.")
    lease_interval = Float(
        1.0, config=True, help="Seconds between lease renewals and hand-off checks."
    )
    handoff_timeout = Float(
        30.0, config=True, help="Seconds to wait for another replica to hand a kernel over."
    )
    checkpoint_delay = Float(
        1.0, config=True, help="Idle seconds after a cell before its state is checkpointed."
    )
    cull_idle_timeout = Integer(
        0, config=True, help="Hibernate (or shut down) kernels idle this many seconds (0: never)."
    )
    cull_interval = Integer(60, config=True, help="Seconds between checks for idle kernels.")
    cull_connected = Bool(
        False, config=True, help="Also cull idle kernels that still have a WebSocket open."
    )
    cull_busy = Bool(False, config=True, help="Also cull kernels that are busy.")
    cull_action = Enum(
        ["hibernate", "shutdown"],
        "hibernate",
        config=True,
        help="What happens to an idle kernel: 'hibernate' keeps its state, 'shutdown' deletes it.",
    )
    max_hibernation_age = Float(
        7 * 24 * 3600.0,
        config=True,
        help="Delete kernels that stayed hibernated this many seconds (0: keep forever).",
    )

    def __init__(self, **kw):
        super().__init__(**kw)
        self._kernels: dict[str, RemoteKernel] = {}
        self._kernel_info: dict[str, dict] = {}
        self._tasks: list[asyncio.Task] = []

    # -- lookups ------------------------------------------------------------

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    def __len__(self) -> int:
        return len(self._kernels)

    def list_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def get_kernel(self, kernel_id: str) -> RemoteKernel:
        """The kernel as this replica knows it (call :meth:`adopt` first)."""
        if kernel_id not in self._kernels:
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
        return self._kernels[kernel_id]

    def _check_kernel_id(self, kernel_id: str) -> None:
        self.get_kernel(kernel_id)

    async def adopt(self, kernel_id: str) -> RemoteKernel:
        """The kernel, loaded from the registry if this replica has not seen it yet."""
        kernel = self._kernels.get(kernel_id)
        if kernel is not None and kernel.pod is not None:
            return kernel
        # Not running here: the registry is the truth (another replica may have deleted it).
        try:
            record = await self.store.get_kernel(kernel_id)
        except StoreError as e:
            if "kernel id" in str(e).lower():
                raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
            raise web.HTTPError(503, f"The kernel registry is unavailable: {e}")
        if record is None:
            stale = self._kernels.pop(kernel_id, None)
            if stale is not None:
                await stale.session.close()
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
        kernel = self._kernels.get(kernel_id)  # known already, or adopted meanwhile
        if kernel is None:
            kernel = self._new_kernel(
                kernel_id, record.get("name", ""), record.get("env") or {}, record
            )
            kernel.hibernated = record.get("state") == "hibernated"
            self._kernels[kernel_id] = kernel
        return kernel

    async def kernel_model(self, kernel_id: str) -> dict:
        return (await self.adopt(kernel_id)).model()

    async def list_kernels(self) -> list[dict]:
        try:
            records = await self.store.list_kernels()
        except StoreError as e:
            self.log.warning("Kernel registry unavailable, listing local kernels only: %s", e)
            return [k.model() for k in self._kernels.values()]
        models = {}
        for record in records:
            if "id" not in record:
                continue
            local = self._kernels.get(record["id"])
            models[record["id"]] = local.model() if local else model_from_record(record)
        return list(models.values())

    def kernels_of(self, username: str) -> int:
        return sum(1 for k in self._kernels.values() if k.username == username)

    # -- start ----------------------------------------------------------------

    def _new_kernel(self, kernel_id: str, kernel_name: str, env: dict, record=None) -> RemoteKernel:
        language = (record or {}).get("language") or self._language_of(kernel_name)
        kernel = RemoteKernel(
            parent=self,
            log=self.log,
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            language=language,
            username=env.get("KERNEL_USERNAME", ""),
            env=env,
            created=(record or {}).get("created") or time.time(),
        )
        if record and record.get("last_activity"):
            kernel.last_activity = record["last_activity"]
        if record:
            kernel.last_checkpoint = record.get("checkpointed")
        kernel.session = self._new_session(kernel)
        # Answer kernel_info of a kernel adopted without a pod (after a gateway restart).
        kernel.session.kernel_info = dict(self._kernel_info.get(language) or {})
        return kernel

    async def start_kernel(
        self,
        kernel_name: str | None = None,
        path: str | None = None,
        kernel_id: str | None = None,
        env: dict | None = None,
        **_kw,
    ) -> str:
        kernel_name = kernel_name or self.default_kernel_name
        kernel_id = kernel_id or str(uuid.uuid4())
        if kernel_id in self._kernels:
            raise web.HTTPError(409, f"Kernel {kernel_id} already exists")
        env = dict(env or {})
        timeout = _launch_timeout(env, self.start_timeout)
        started = time.perf_counter()
        kernel = self._new_kernel(kernel_id, kernel_name, env)
        try:
            if not await self.store.acquire_lease(kernel_id, self.owner, self.lease_ttl):
                raise web.HTTPError(409, f"Kernel {kernel_id} already exists")
        except StoreError as e:
            raise web.HTTPError(503, f"The kernel registry is unavailable: {e}")
        self._kernels[kernel_id] = kernel
        try:
            async with kernel.lock:
                await self._put_on_new_pod(kernel, timeout)
            await self._save_record(kernel, "running")
        except BaseException:
            self._kernels.pop(kernel_id, None)
            await self._drop_pod(kernel)
            await self._quietly(self.store.delete_kernel(kernel_id))
            raise
        elapsed = time.perf_counter() - started
        metrics.KERNEL_STARTS.labels(language=kernel.language).inc()
        metrics.KERNEL_START_SECONDS.labels(language=kernel.language).observe(elapsed)
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
            await self._settle_files(kernel)
            if not kernel.attached:
                await self._resume(kernel)

        async def after_execute(reply: dict, frame: dict) -> None:
            kernel.touch()
            metrics.EXECUTES.labels(language=kernel.language).inc()
            if reply.get("ename") == "KernelDied":
                self._on_pod_lost(kernel, kernel.pod, "its kernel process died")
                return
            kernel.dirty = True
            self._schedule_checkpoint(kernel)
            fingerprint = frame.get("workspace")
            if fingerprint is not None and fingerprint == kernel.synced_workspace:
                return  # the cell changed no file
            if self.files is not None and kernel.runner is not None:
                # In the background, so the cell's idle is not held back; the next request
                # and any release of the pod wait for it (_settle_files).
                kernel.file_sync = asyncio.ensure_future(self._sync_files(kernel, fingerprint))

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
        on_lost = lambda: self._on_pod_lost(kernel, pod, "its pod stopped")  # noqa: E731
        runner = pod.meta.pop("runner", None)  # connected while the pod was warm
        try:
            if runner is None or runner.lost:
                runner = RunnerClient(pod.url, pod.token)
                await runner.connect()
            runner.on_lost = on_lost
            if runner.lost:  # died between the pool's check and now
                raise RunnerError("the pod's runner went away")
            if kernel.env:
                await runner.set_env({k: str(v) for k, v in kernel.env.items()})
            info = self._kernel_info.get(kernel.language)
            if info is None:
                info = self._kernel_info[kernel.language] = await runner.kernel_info()
            if self.files is not None:
                await self.files.restore(kernel.kernel_id, runner)
            await kernel.session.attach_runner(runner, info)
        except RestoreFailed as e:
            runner.close()
            await self.pool.release(pod)
            raise web.HTTPError(503, f"The kernel's files could not be restored: {e}")
        except RunnerError as e:
            runner.close()
            await self.pool.release(pod)
            raise web.HTTPError(503, f"The kernel's pod did not answer: {e}")
        kernel.pod, kernel.runner = pod, runner
        kernel.synced_workspace = None  # a new pod: its first cell syncs
        kernel.lost_reason = None
        kernel.hibernated = False

    async def prepare_pod(self, pod: Pod) -> None:
        """Open a warm pod's runner channel (and learn its kernel_info) before any kernel
        needs it, so a kernel start is a lease plus a few small calls."""
        runner = RunnerClient(pod.url, pod.token)
        await runner.connect()
        if pod.language not in self._kernel_info:
            self._kernel_info[pod.language] = await runner.kernel_info()
        pod.meta["runner"] = runner

    async def _settle_files(self, kernel: RemoteKernel) -> None:
        """Wait for the file sync of the last cell, if it is still running."""
        task, kernel.file_sync = kernel.file_sync, None
        if task is not None and not task.done():
            try:
                await task
            except Exception:
                self.log.exception("Kernel %s: file sync failed", kernel.kernel_id)

    async def _drop_pod(self, kernel: RemoteKernel) -> None:
        """Detach and destroy the kernel's pod (no checkpoint); its last files are saved first."""
        await self._settle_files(kernel)
        if kernel.checkpoint_timer is not None:
            kernel.checkpoint_timer.cancel()
            kernel.checkpoint_timer = None
        runner = kernel.session.detach_runner()
        if runner is not None:
            runner.close()
        pod, kernel.pod, kernel.runner = kernel.pod, None, None
        if pod is not None:
            await self.pool.release(pod)

    def _on_pod_lost(self, kernel: RemoteKernel, pod: Pod | None, why: str) -> None:
        if pod is None or kernel.pod is not pod or kernel.lost_reason:
            return
        self.log.warning("Kernel %s lost pod %s: %s", kernel.kernel_id, pod.name, why)
        kernel.lost_reason = why
        runner = kernel.session.detach_runner()
        if runner is not None:
            runner.close()
        kernel.pod = kernel.runner = None
        asyncio.ensure_future(self.pool.lost(pod))

    # -- moving between pods ----------------------------------------------------

    async def _resume(self, kernel: RemoteKernel, *, restore_state: bool = True) -> None:
        """Give a kernel without a pod a fresh one, with its files and last checkpoint."""
        async with kernel.lock:
            if kernel.attached:
                return
            lost_reason = kernel.lost_reason
            if kernel.pod is not None:
                await self._drop_pod(kernel)
            await self._take_lease(kernel)
            await self._put_on_new_pod(kernel, self.start_timeout)
            result = None
            if restore_state:
                result = await checkpoints.restore(self.store, kernel.kernel_id, kernel.runner)
            await self._save_record(kernel, "running")
        notice = _resume_notice(lost_reason, result, kernel.last_checkpoint)
        if kernel.session.move_notes:  # comms and debug sessions stay behind with the pod
            head = notice.rstrip("\n") or "[kcr] The kernel moved to a new pod."
            notice = " ".join([head, *kernel.session.move_notes]) + "\n"
            kernel.session.move_notes = []
        if notice:
            kernel.session.tell_user(notice)
        self.log.info(
            "Kernel %s resumed on pod %s%s",
            kernel.kernel_id,
            kernel.pod.name,
            f" after {lost_reason}" if lost_reason else "",
        )

    async def _take_lease(self, kernel: RemoteKernel) -> None:
        """Hold the kernel's lease, asking the replica that holds it to hand it over."""
        store, kid = self.store, kernel.kernel_id
        try:
            if await store.acquire_lease(kid, self.owner, self.lease_ttl):
                return
            holder = await store.lease_owner(kid)
            self.log.info("Kernel %s is held by %s: asking for a hand-off", kid, holder)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.handoff_timeout
            while loop.time() < deadline:
                await store.acquire_lease(kid + HANDOFF, self.owner, self.lease_ttl)
                if await store.acquire_lease(kid, self.owner, self.lease_ttl):
                    await store.release_lease(kid + HANDOFF, self.owner)
                    return
                await asyncio.sleep(0.05)
            await store.release_lease(kid + HANDOFF, self.owner)
        except StoreError as e:
            raise web.HTTPError(503, f"The kernel registry is unavailable: {e}")
        raise web.HTTPError(
            503,
            f"Kernel {kid} is running on another gateway replica ({holder}) that did not hand it "
            f"over within {self.handoff_timeout:g} s; try again",
        )

    async def hibernate(self, kernel: RemoteKernel, reason: str) -> bool:
        """Checkpoint, then release pod and lease; False when the state could not be saved."""
        async with kernel.lock, kernel.checkpoint_lock:  # waits for a checkpoint in flight
            if kernel.pod is None:
                return True
            if kernel.dirty:
                result = await self._checkpoint_locked(kernel, quiet=True)
                if result is not None and not result.saved:
                    self.log.warning(
                        "Kernel %s not hibernated (%s): %s", kernel.kernel_id, reason, result.error
                    )
                    return False
            await self._drop_pod(kernel)
            kernel.hibernated = True
            await self._save_record(kernel, "hibernated")
            await self._quietly(self.store.release_lease(kernel.kernel_id, self.owner))
        self.log.info("Kernel %s hibernated (%s)", kernel.kernel_id, reason)
        return True

    # -- checkpoints ------------------------------------------------------------

    def _schedule_checkpoint(self, kernel: RemoteKernel) -> None:
        if kernel.checkpoint_timer is not None:
            kernel.checkpoint_timer.cancel()
        kernel.checkpoint_timer = asyncio.get_running_loop().call_later(
            self.checkpoint_delay, lambda: asyncio.ensure_future(self._checkpoint_if_idle(kernel))
        )

    async def _checkpoint_if_idle(self, kernel: RemoteKernel) -> None:
        kernel.checkpoint_timer = None
        if kernel.dirty and kernel.attached and kernel.session.idle:
            await self._checkpoint(kernel)

    async def _checkpoint(self, kernel: RemoteKernel, quiet: bool = False):
        """Save the kernel's namespace; warn the user on stderr when that fails."""
        async with kernel.checkpoint_lock:
            return await self._checkpoint_locked(kernel, quiet)

    async def _checkpoint_locked(self, kernel: RemoteKernel, quiet: bool = False):
        if not kernel.dirty or kernel.runner is None or not kernel.attached:
            return None
        kernel.dirty = False
        result = await checkpoints.checkpoint(self.store, kernel.kernel_id, kernel.runner)
        if not result.saved:
            kernel.dirty = True
            self.log.warning("Checkpoint of kernel %s failed: %s", kernel.kernel_id, result.error)
            if not quiet:
                kernel.session.tell_user(f"[kcr] warning: {result.error}.\n")
            metrics.CHECKPOINTS.labels(outcome="failed").inc()
        else:
            kernel.last_checkpoint = time.time()
            metrics.CHECKPOINTS.labels(outcome="saved").inc()
            metrics.CHECKPOINT_BYTES.observe(result.size)
            self.log.debug(
                "Kernel %s checkpointed: %d bytes in %.1f ms",
                kernel.kernel_id,
                result.size,
                result.seconds * 1e3,
            )
        return result

    async def _sync_files(self, kernel: RemoteKernel, fingerprint: str | None = None) -> None:
        runner = kernel.runner
        if runner is None:
            return
        result = await self.files.sync(kernel.kernel_id, runner)
        if result.error is None and kernel.runner is runner:
            kernel.synced_workspace = fingerprint
        if result.warning:
            kernel.session.tell_user(f"[kcr] warning: {result.warning}\n")

    # -- REST actions -----------------------------------------------------------

    async def restart_kernel(self, kernel_id: str, now: bool = False, **_kw) -> None:
        kernel = await self.adopt(kernel_id)
        session = kernel.session
        async with kernel.lock:
            # "starting", as a freshly started kernel says: on iopub, "restarting" tells
            # JupyterLab the kernel died and was auto-restarted ("appears to have died").
            session.set_state("starting")
            session.reset_queue("the kernel was restarted")
            await self._take_lease(kernel)
            async with kernel.checkpoint_lock:  # no checkpoint of the old pod lands after this
                await self._drop_pod(kernel)
                kernel.dirty = False
                await self._quietly(self.store.delete_state(kernel_id))
            await self._put_on_new_pod(kernel, self.start_timeout)
            await self._save_record(kernel, "running")
        kernel.touch()
        self.log.info("Kernel %s restarted on pod %s", kernel_id, kernel.pod.name)

    async def interrupt_kernel(self, kernel_id: str) -> None:
        kernel = await self.adopt(kernel_id)
        if kernel.attached or not kernel.session.idle:  # running here, or about to
            result = await kernel.session.interrupt()
            if result.get("status") != "ok":
                raise web.HTTPError(500, result.get("evalue", "interrupt failed"))
            return
        # Running on another replica: leave a request there (see _keep_leases).
        try:
            holder = await self.store.lease_owner(kernel_id)
            if holder and holder != self.owner:
                token = f"{self.owner}:{uuid.uuid4().hex[:8]}"
                await self.store.acquire_lease(
                    kernel_id + INTERRUPT, token, 3 * self.lease_interval
                )
        except StoreError as e:
            raise web.HTTPError(503, f"The kernel registry is unavailable: {e}")

    async def shutdown_kernel(
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        kernel = await self.adopt(kernel_id)
        async with kernel.lock:
            await self._take_lease(kernel)
            self._kernels.pop(kernel_id, None)
            await kernel.session.close()
            await self._drop_pod(kernel)
            await self._quietly(self.store.delete_kernel(kernel_id))
            if self.files is not None:
                await self._quietly(self.files.forget(kernel_id))
        self.log.info("Kernel %s shut down", kernel_id)

    async def shutdown_all(self, now: bool = False) -> None:
        """Delete every kernel this replica holds (records, state and files too)."""
        await asyncio.gather(
            *(self.shutdown_kernel(k) for k in list(self._kernels)), return_exceptions=True
        )

    async def detach_all(self) -> None:
        """Gateway shutdown: hibernate every attached kernel so another process resumes it."""
        kernels = [k for k in self._kernels.values() if k.pod is not None]
        await asyncio.gather(
            *(self.hibernate(k, "gateway shutdown") for k in kernels), return_exceptions=True
        )
        for kernel in kernels:
            if kernel.pod is not None:  # its state could not be saved: still free the pod
                await self._drop_pod(kernel)
                await self._quietly(self.store.release_lease(kernel.kernel_id, self.owner))

    # -- background work ---------------------------------------------------------

    def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._keep_leases()))
        if self.cull_idle_timeout > 0:
            self.log.info(
                "Kernels idle for %ss are %s (checked every %ss)",
                self.cull_idle_timeout,
                "hibernated" if self.cull_action == "hibernate" else "shut down",
                self.cull_interval,
            )
        self._tasks.append(asyncio.create_task(self._cull_loop()))

    def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def _keep_leases(self) -> None:
        """Renew this replica's leases; act on hand-off and interrupt requests."""
        while True:
            await asyncio.sleep(self.lease_interval)
            for kernel in [k for k in self._kernels.values() if k.pod is not None]:
                try:
                    await self._keep_lease(kernel)
                except StoreError as e:
                    self.log.warning("Lease upkeep of kernel %s failed: %s", kernel.kernel_id, e)
                except Exception:
                    self.log.exception("Lease upkeep of kernel %s failed", kernel.kernel_id)

    async def _keep_lease(self, kernel: RemoteKernel) -> None:
        kid = kernel.kernel_id
        if not await self.store.renew_lease(kid, self.owner, self.lease_ttl):
            if not await self.store.acquire_lease(kid, self.owner, self.lease_ttl):
                self.log.error("Kernel %s: lease lost to another replica; dropping its pod", kid)
                async with kernel.lock:
                    await self._drop_pod(kernel)
                return
        asker = await self.store.lease_owner(kid + HANDOFF)
        if asker and asker != self.owner:
            if kernel.session.idle:
                await self.hibernate(kernel, f"hand-off to {asker}")
        wants_interrupt = await self.store.lease_owner(kid + INTERRUPT)
        if wants_interrupt and wants_interrupt not in kernel.interrupts_seen:
            kernel.interrupts_seen.add(wants_interrupt)
            await kernel.session.interrupt()

    async def _cull_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cull_interval)
            try:
                await self.cull_idle_kernels()
            except Exception:
                self.log.exception("Culling idle kernels failed")

    async def cull_idle_kernels(self) -> list[str]:
        """Hibernate (or shut down) idle kernels; delete ones hibernated too long."""
        now = time.time()
        culled = []
        if self.cull_idle_timeout > 0:
            for kernel in [k for k in self._kernels.values() if k.pod is not None]:
                idle_for = now - kernel.last_activity
                if idle_for < self.cull_idle_timeout:
                    continue
                if kernel.connections and not self.cull_connected:
                    continue
                if not kernel.session.idle and not self.cull_busy:
                    continue
                self.log.info(
                    "Kernel %s idle for %.0fs: %s", kernel.kernel_id, idle_for, self.cull_action
                )
                if self.cull_action == "shutdown":
                    await self._quietly(self.shutdown_kernel(kernel.kernel_id))
                elif not await self.hibernate(kernel, f"idle for {idle_for:.0f}s"):
                    continue
                culled.append(kernel.kernel_id)
        if self.max_hibernation_age > 0:
            try:
                records = await self.store.list_kernels()
            except StoreError:
                records = []
            for record in records:
                age = now - (record.get("last_activity") or now)
                if record.get("state") == "hibernated" and age > self.max_hibernation_age:
                    self.log.info("Kernel %s hibernated for %.0fs: deleting", record["id"], age)
                    await self._quietly(self.shutdown_kernel(record["id"]))
                    culled.append(record["id"])
        return culled

    # -- helpers --------------------------------------------------------------

    async def _save_record(self, kernel: RemoteKernel, state: str) -> None:
        try:
            await self.store.put_kernel(kernel.kernel_id, kernel.record(state, self.owner))
        except StoreError as e:
            self.log.warning("Kernel %s: registry update failed: %s", kernel.kernel_id, e)

    async def _quietly(self, coro) -> Any:
        try:
            return await coro
        except (StoreError, web.HTTPError, RunnerError) as e:
            self.log.warning("%s", e)
            return None


def _resume_notice(lost_reason: str | None, result, last_checkpoint: float | None) -> str:
    """The one stderr line a user sees when their kernel moved to a new pod."""
    state_gone = result is not None and not result.found and last_checkpoint is not None
    if lost_reason is None and not state_gone:
        if result is None or not (result.errors or result.error):
            return ""
    parts = [f"[kcr] The kernel moved to a new pod ({lost_reason or 'it was resumed'})."]
    if result is not None and result.found and result.created:
        when = datetime.fromtimestamp(result.created).strftime("%H:%M:%S")
        parts.append(f"State restored as of {when}.")
    elif state_gone:
        when = datetime.fromtimestamp(last_checkpoint).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(
            f"Its saved state (from {when}) is no longer in the store (expired or deleted): "
            "variables are lost."
        )
    elif lost_reason:
        parts.append("No saved state existed: variables are lost.")
    if result is not None and result.errors:
        names = ", ".join(e.get("name", "?") for e in result.errors)
        parts.append(f"Not restored: {names}.")
    if result is not None and result.error:
        parts.append(f"Restore failed: {result.error}.")
    return " ".join(parts) + "\n"


def _launch_timeout(env: dict, default: float) -> float:
    """``KERNEL_LAUNCH_TIMEOUT`` from the request (as Enterprise Gateway honours it)."""
    try:
        return float(env.get("KERNEL_LAUNCH_TIMEOUT", default))
    except (TypeError, ValueError):
        return default

"""The gateway's kernel manager: the mapping of durable kernels, seen through REST.

Map of this package (each module's docstring states its contract):

==================  ===========================================================
``manager``         :class:`KCRKernelManager`: the dict of kernels, ``adopt``,
                    the methods jupyter_server's handlers call, and the edge
                    where typed errors become HTTP errors (``translate_errors``)
``remote_kernel``   :class:`RemoteKernel`: one kernel, its :class:`KernelState`
                    and its moves between pods (attach, drop, lost, resume,
                    hibernate, restart, shutdown)
``leases``          :class:`KCRLeaseKeeper`: leases, hand-offs and interrupt
                    requests between replicas (``--KCRLeaseKeeper.*``)
``checkpoints``     :class:`KCRCheckpointer`: when namespaces are saved and
                    restored (``--KCRCheckpointer.checkpoint_delay``)
``culling``         :class:`KCRCuller`: idle kernels hibernated or shut down
                    (``--KCRCuller.cull_*``)
``errors``          the typed errors, their HTTP statuses (:func:`http_error`)
``tasks``           :class:`TaskOwner`: every background task has an owner
==================  ===========================================================

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
  the store (:mod:`.leases`); so a kernel is never attached to two pods at once.
* After a cell, once the kernel has been idle for ``checkpoint_delay``, its
  namespace is checkpointed into the store (:mod:`.checkpoints`); it is also
  checkpointed before its pod is released on purpose (hibernation, hand-off,
  gateway shutdown).
* A kernel without a pod (hibernated, its pod lost, or never attached on this
  replica) gets a fresh pod on its next request, with its files and its last
  checkpoint restored (:meth:`RemoteKernel.resume`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import time
import uuid

from jupyter_client.kernelspec import NoSuchKernel
from traitlets import Any as AnyTrait
from traitlets import Float, Instance, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from kcr_kernels.backends.base import Pod
from kcr_kernels.kernelspecs import KCRKernelSpecManager, spec_language
from kcr_kernels.pool import PodPool
from kcr_kernels.runner_client import RunnerClient
from kcr_kernels.stores import InvalidKernelId, KernelStore, StoreError

from .. import metrics
from .checkpoints import KCRCheckpointer
from .culling import KCRCuller
from .errors import (
    InterruptFailed,
    KernelError,
    KernelExists,
    RegistryUnavailable,
    UnknownKernel,
    UnknownKernelSpec,
    http_error,
    quietly,
)
from .leases import KCRLeaseKeeper
from .remote_kernel import KernelState, RemoteKernel, iso

#: Options that moved from KCRKernelManager to the class that uses them. The old
#: spelling (``--KCRKernelManager.cull_idle_timeout``) keeps working; the new one wins.
MOVED_OPTIONS = {
    "owner": "KCRLeaseKeeper",
    "lease_ttl": "KCRLeaseKeeper",
    "lease_interval": "KCRLeaseKeeper",
    "handoff_timeout": "KCRLeaseKeeper",
    "checkpoint_delay": "KCRCheckpointer",
    "cull_idle_timeout": "KCRCuller",
    "cull_interval": "KCRCuller",
    "cull_connected": "KCRCuller",
    "cull_busy": "KCRCuller",
    "cull_action": "KCRCuller",
    "max_hibernation_age": "KCRCuller",
}


def _with_moved_options(config: Config) -> tuple[Config, list[str]]:
    """``config`` with the :data:`MOVED_OPTIONS` set on KCRKernelManager moved to their class."""
    if not config._has_section("KCRKernelManager"):
        return config, []
    moved = [name for name in MOVED_OPTIONS if name in config.KCRKernelManager]
    if not moved:
        return config, []
    config = copy.deepcopy(config)
    for name in moved:
        value = config.KCRKernelManager.pop(name)
        section = config[MOVED_OPTIONS[name]]
        if name not in section:
            section[name] = value
    return config, moved


def translate_errors(method):
    """The edge: a :class:`KernelError` from domain code becomes the client's HTTP error."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def translated(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except KernelError as e:
                raise http_error(e) from e

    else:

        @functools.wraps(method)
        def translated(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except KernelError as e:
                raise http_error(e) from e

    return translated


def model_from_record(record: dict) -> dict:
    return {
        "id": record["id"],
        "name": record.get("name", ""),
        "last_activity": iso(record.get("last_activity") or time.time()),
        "execution_state": "hibernated" if record.get("state") == "hibernated" else "idle",
        "connections": 0,
    }


class KCRKernelManager(LoggingConfigurable):
    """The durable kernels this replica knows, by id; what REST asks of them.

    Contract:

    * :meth:`start_kernel` leases a warm pod for the kernelspec's language,
      connects to its runner, adds the request's environment, registers the
      kernel and returns its id; unknown kernelspecs are a 404, an exhausted
      pool a 503, a pod that will not start a 503 with the reason.
    * :meth:`adopt` makes a kernel known to this replica from the registry
      (404 if the registry has no such kernel); handlers call it first.
    * :meth:`list_kernels_from_registry` answers within ``registry_list_timeout``
      for a networked registry: when it fails or is slow, from this replica's own
      view (the kernels the registry last listed, and those it runs), saying so.
      A kernel without a pod is ``hibernated``; one another replica runs, ``idle``.
    * A request on a kernel without a pod puts it on a fresh pod with its
      files and last checkpoint (resume, recovery, hand-off).
    * :meth:`restart_kernel` puts the kernel on a fresh pod with its files
      but *without* its state (the checkpoint is deleted); connected
      WebSockets keep working.
    * :meth:`shutdown_kernel` destroys the pod and deletes the kernel's
      record, state and files everywhere; it always frees the pod.
    * REST-facing methods raise ``tornado.web.HTTPError`` (see
      :mod:`.errors` for the statuses); :meth:`remove` and :meth:`restart`
      are the same actions for domain callers and raise :class:`KernelError`.

    Collaborators: ``leases`` (:class:`KCRLeaseKeeper`), ``checkpointer``
    (:class:`KCRCheckpointer`) and ``culler`` (:class:`KCRCuller`) are built
    here with this manager as their parent; each has its own options.
    """

    pool = Instance(PodPool)
    kernel_spec_manager = Instance(KCRKernelSpecManager)
    store = Instance(KernelStore)
    files = AnyTrait(None, allow_none=True, help="A WorkspaceSync, or None for no file store.")
    default_kernel_name = Unicode(
        config=True, help="Kernelspec used by default (default: KCRGateway.default_kernel_name)."
    )

    @default("default_kernel_name")
    def _default_kernel_name_default(self) -> str:
        return getattr(self.parent, "default_kernel_name", None) or "kcr-python"

    runner_factory = AnyTrait(
        None,
        allow_none=True,
        help="Builds the RunnerClient of a pod (pod -> client); None: a real RunnerClient. "
        "Tests pass a double (tests/fakes/fake_runner_client.py).",
    )
    kernel_info_timeout = Float(60.0, config=True, help="Seconds a client waits for kernel_info.")
    registry_list_timeout = Float(
        0.05,
        config=True,
        help="Seconds GET /api/kernels waits for a networked registry (Redis); after it (or "
        "when the registry is known to be down) the answer is this gateway's own view, with "
        "the header X-KCR-Registry: unreachable. 0: wait as long as the store's own timeout. "
        "Not applied to the local SQLite store.",
    )
    start_timeout = Float(
        config=True,
        help="Seconds a kernel start may wait for a pod when the pool is empty "
        "(default: the pool's, KCRGateway.pod_start_timeout).",
    )

    @default("start_timeout")
    def _start_timeout_default(self) -> float:
        return self.pool.start_timeout if self.pool is not None else 30.0

    def __init__(self, **kw):
        config = kw.pop("config", None)
        if config is None and kw.get("parent") is not None:
            config = kw["parent"].config
        moved: list[str] = []
        if config is not None:
            config, moved = _with_moved_options(config)
            kw["config"] = config
        super().__init__(**kw)
        for name in moved:
            self.log.info("KCRKernelManager.%s is read as %s.%s", name, MOVED_OPTIONS[name], name)
        self.leases = KCRLeaseKeeper(parent=self, log=self.log, store=self.store)
        self.checkpointer = KCRCheckpointer(parent=self, log=self.log, store=self.store)
        self.culler = KCRCuller(parent=self, log=self.log)
        self._kernels: dict[str, RemoteKernel] = {}
        #: registry records as of the last listing that answered (for listings during an outage)
        self._registry_view: dict[str, dict] = {}
        self.kernel_info_cache: dict[str, dict] = {}  # language -> the runner's kernel_info

    @property
    def owner(self) -> str:
        """This replica's name in leases (``KCRLeaseKeeper.owner``)."""
        return self.leases.owner

    # -- lookups ------------------------------------------------------------

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    def __len__(self) -> int:
        return len(self._kernels)

    def __bool__(self) -> bool:  # a manager without kernels is still a parent (traitlets)
        return True

    def list_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def attached_kernels(self) -> list[RemoteKernel]:
        """The kernels this replica runs on a pod now."""
        return [k for k in self._kernels.values() if k.attached]

    @translate_errors
    def get_kernel(self, kernel_id: str) -> RemoteKernel:
        """The kernel as this replica knows it (call :meth:`adopt` first)."""
        if kernel_id not in self._kernels:
            raise UnknownKernel(kernel_id)
        return self._kernels[kernel_id]

    def _check_kernel_id(self, kernel_id: str) -> None:
        self.get_kernel(kernel_id)

    @translate_errors
    async def adopt(self, kernel_id: str) -> RemoteKernel:
        """The kernel, loaded from the registry if this replica has not seen it yet."""
        return await self._adopt(kernel_id)

    async def _adopt(self, kernel_id: str) -> RemoteKernel:
        kernel = self._kernels.get(kernel_id)
        if kernel is not None and kernel.attached:
            return kernel
        # Not running here: the registry is the truth (another replica may have deleted it).
        try:
            record = await self.store.get_kernel(kernel_id)
        except InvalidKernelId:
            raise UnknownKernel(kernel_id)
        except StoreError as e:
            raise RegistryUnavailable(e, kernel_id)
        if record is None:
            self._registry_view.pop(kernel_id, None)
            stale = self._kernels.pop(kernel_id, None)
            if stale is not None:
                await stale.session.close()
            raise UnknownKernel(kernel_id)
        kernel = self._kernels.get(kernel_id)  # known already, or adopted meanwhile
        if kernel is None:
            kernel = self._new_kernel(
                kernel_id, record.get("name", ""), record.get("env") or {}, record
            )
            self._kernels[kernel_id] = kernel
        return kernel

    @translate_errors
    async def kernel_model(self, kernel_id: str) -> dict:
        return (await self._adopt(kernel_id)).model()

    async def list_kernels(self, user: str | None = None) -> list[dict]:
        """Models of every kernel in the registry; only those owned by ``user`` if given."""
        return (await self.list_kernels_from_registry(user))[0]

    async def list_kernels_from_registry(self, user: str | None = None) -> tuple[list[dict], bool]:
        """(models, whether the registry answered). When the registry fails or does not
        answer within ``registry_list_timeout``, the models are this replica's own view."""
        store = self.store
        records = None
        if getattr(store, "reachable", True):
            bound = None if getattr(store, "local", False) else self.registry_list_timeout
            try:
                records = await asyncio.wait_for(store.list_kernels(), bound or None)
            except TimeoutError:
                self.log.warning(
                    "Kernel registry did not answer within %g s: listing this gateway's "
                    "kernels only",
                    self.registry_list_timeout,
                )
                if hasattr(store, "suspect"):
                    store.suspect("listing kernels")
            except StoreError as e:
                self.log.warning("Kernel registry unavailable, listing local kernels only: %s", e)
        complete = records is not None
        if complete:
            self._registry_view = {r["id"]: r for r in records if "id" in r}
        else:  # the registry as last seen, and what this replica runs now
            records = [
                *self._registry_view.values(),
                *(k.record("running", self.owner) for k in self._kernels.values()),
            ]
        models = {}
        for record in records:
            if "id" not in record or user not in (None, record.get("user", "")):
                continue
            local = self._kernels.get(record["id"])
            models[record["id"]] = local.model() if local else self._model_of(record)
        return list(models.values()), complete

    async def load_registry_view(self) -> None:
        """Read the registry once at start-up, so a listing while it is unreachable still
        names the kernels it had (failures are logged)."""
        try:
            records = await self.store.list_kernels()
        except StoreError as e:
            self.log.warning("Kernel registry unavailable at start-up: %s", e)
            return
        self._registry_view = {r["id"]: r for r in records if "id" in r}

    def _model_of(self, record: dict) -> dict:
        """The model of a kernel this replica has not adopted: one its own previous process
        ran (same replica name) has no pod now, so it is ``hibernated``."""
        model = model_from_record(record)
        if record.get("owner") == self.owner:
            model["execution_state"] = "hibernated"
        return model

    def kernels_of(self, username: str) -> int:
        return sum(1 for k in self._kernels.values() if k.username == username)

    def kernels_owned_by(self, user: str) -> int:
        return sum(1 for k in self._kernels.values() if k.user == user)

    # -- start ----------------------------------------------------------------

    def _new_kernel(
        self, kernel_id: str, kernel_name: str, env: dict, record=None, user: str = ""
    ) -> RemoteKernel:
        language = (record or {}).get("language") or self._language_of(kernel_name)
        return RemoteKernel(
            self,
            record,
            parent=self,
            log=self.log,
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            language=language,
            username=env.get("KERNEL_USERNAME", ""),
            user=str((record or {}).get("user") or user),
            env=env,
        )

    @translate_errors
    async def start_kernel(
        self,
        kernel_name: str | None = None,
        path: str | None = None,
        kernel_id: str | None = None,
        env: dict | None = None,
        user: str = "",
        **_kw,
    ) -> str:
        # An alias (python3 -> kcr-python) starts, and is listed as, the kcr kernelspec.
        kernel_name = self.kernel_spec_manager.resolve(kernel_name or self.default_kernel_name)
        kernel_id = kernel_id or str(uuid.uuid4())
        if kernel_id in self._kernels:
            raise KernelExists(kernel_id)
        env = dict(env or {})
        timeout = _launch_timeout(env, self.start_timeout)
        started = time.perf_counter()
        kernel = self._new_kernel(kernel_id, kernel_name, env, user=user)
        if not await self.leases.acquire(kernel_id):
            raise KernelExists(kernel_id)
        self._kernels[kernel_id] = kernel
        try:
            await kernel.start(timeout)
        except BaseException:
            self._kernels.pop(kernel_id, None)
            await kernel.drop_pod()
            await quietly(self.store.delete_kernel(kernel_id), self.log)
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
            raise UnknownKernelSpec(kernel_name)
        return spec.metadata.get("kcr", {}).get("language") or spec_language(
            kernel_name, spec.language
        )

    def new_runner(self, pod: Pod) -> RunnerClient:
        """A (not yet connected) client for ``pod``'s runner."""
        if self.runner_factory is not None:
            return self.runner_factory(pod)
        return RunnerClient(pod.url, pod.token)

    async def prepare_pod(self, pod: Pod) -> None:
        """Open a warm pod's runner channel (and learn its kernel_info) before any kernel
        needs it, so a kernel start is a lease plus a few small calls."""
        runner = self.new_runner(pod)
        await runner.connect()
        if pod.language not in self.kernel_info_cache:
            self.kernel_info_cache[pod.language] = await runner.kernel_info()
        pod.meta["runner"] = runner

    async def hibernate(self, kernel: RemoteKernel, reason: str) -> bool:
        """Checkpoint, then release pod and lease; False when the state could not be saved."""
        return await kernel.hibernate(reason)

    # -- REST actions -----------------------------------------------------------

    async def restart(self, kernel_id: str) -> None:
        """Put the kernel on a fresh pod without its state (raises :class:`KernelError`)."""
        await (await self._adopt(kernel_id)).restart()

    @translate_errors
    async def restart_kernel(self, kernel_id: str, now: bool = False, **_kw) -> None:
        await self.restart(kernel_id)

    @translate_errors
    async def interrupt_kernel(self, kernel_id: str) -> None:
        kernel = await self._adopt(kernel_id)
        if kernel.attached or not kernel.session.idle:  # running here, or about to
            result = await kernel.session.interrupt()
            if result.get("status") != "ok":
                raise InterruptFailed(result.get("evalue", "interrupt failed"), kernel_id)
            return
        # Running on another replica: leave a request there (see leases.KCRLeaseKeeper.keep).
        await self.leases.ask_interrupt(kernel_id)

    async def remove(self, kernel_id: str) -> None:
        """Shut the kernel down everywhere (raises :class:`KernelError`); always frees the pod."""
        kernel = await self._adopt(kernel_id)

        def forget() -> None:
            self._kernels.pop(kernel_id, None)
            self._registry_view.pop(kernel_id, None)

        await kernel.shutdown(forget=forget)

    @translate_errors
    async def shutdown_kernel(
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        await self.remove(kernel_id)

    async def shutdown_all(self, now: bool = False) -> None:
        """Delete every kernel this replica holds (records, state and files too)."""
        await asyncio.gather(*(self.remove(k) for k in list(self._kernels)), return_exceptions=True)

    async def detach_all(self) -> None:
        """Gateway shutdown: hibernate every attached kernel so another process resumes it.

        Then waits for (or cancels) every background task of the manager and its kernels.
        """
        kernels = self.attached_kernels()
        await asyncio.gather(
            *(k.hibernate("gateway shutdown") for k in kernels), return_exceptions=True
        )
        for kernel in kernels:
            if kernel.pod is not None:  # its state could not be saved: still free the pod
                await kernel.drop_pod()
                await self.leases.release(kernel.kernel_id)
        await self.leases.close()
        await self.culler.close()
        await self.checkpointer.close()
        for kernel in list(self._kernels.values()):
            await kernel.tasks.drain()

    # -- background work ---------------------------------------------------------

    def start_background(self) -> None:
        """Start lease upkeep and culling (their tasks belong to the lease keeper and culler)."""
        self.leases.start(self.attached_kernels)
        self.culler.start(self)

    def stop_background(self) -> None:
        self.leases.stop()
        self.culler.stop()

    async def cull_idle_kernels(self) -> list[str]:
        """One culling pass now (see :class:`KCRCuller`)."""
        return await self.culler.cull(self)


def _launch_timeout(env: dict, default: float) -> float:
    """``KERNEL_LAUNCH_TIMEOUT`` from the request (as Enterprise Gateway honours it)."""
    try:
        return float(env.get("KERNEL_LAUNCH_TIMEOUT", default))
    except (TypeError, ValueError):
        return default


__all__ = ["KCRKernelManager", "KernelState", "RemoteKernel", "translate_errors"]

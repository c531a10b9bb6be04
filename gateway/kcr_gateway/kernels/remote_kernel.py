"""One durable kernel as this replica knows it, and its moves between pods.

A :class:`RemoteKernel` is in one :class:`KernelState` at a time; each
transition is a method of the kernel:

=================  =============================  ==============================
method             from                           to
=================  =============================  ==============================
``start``          DETACHED (new, lease held)     ATTACHED
``resume``         DETACHED, LOST, HIBERNATED     ATTACHED (files + checkpoint)
``restart``        any but CLOSED                 ATTACHED (files, no state)
``pod_lost``       ATTACHED                       LOST (the pod died under it)
``drop_pod``       ATTACHED                       DETACHED (e.g. lease lost)
``hibernate``      ATTACHED                       HIBERNATED (checkpoint first)
``shutdown``       any                            CLOSED (pod always freed)
=================  =============================  ==============================

A request on a kernel that is not ATTACHED resumes it first (the session's
``before_request`` hook).

The kernel needs a few things from the gateway (the pod pool, the stores,
the lease keeper, the checkpointer): they come from its :class:`KernelHost`,
which the manager implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from traitlets import Dict, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from kcr_kernels.backends.base import Pod, PodStartError
from kcr_kernels.pool import PodPool, PoolExhausted
from kcr_kernels.pool import UnknownLanguage as PoolUnknownLanguage
from kcr_kernels.runner_client import RunnerClient, RunnerError
from kcr_kernels.session import KernelSession
from kcr_kernels.stores import KernelStore, StoreError
from kcr_kernels.workspace_sync import RestoreFailed

from .. import metrics
from .errors import NoPodAvailable, PodFailed, UnknownLanguage, quietly
from .file_saving import KCRFileSaver, KernelFileSaver, name_files
from .tasks import TaskOwner

if TYPE_CHECKING:
    from kcr_kernels.workspace_sync import WorkspaceSync

    from .checkpoints import Checkpointer
    from .leases import LeaseKeeper

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

#: What the runner's reply says when the worker process died under a request (runner protocol).
WORKER_DIED = "KernelDied"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime(ISO_FORMAT)


class KernelState(enum.Enum):
    """Where a kernel is, as seen from this replica."""

    DETACHED = "detached"  #: known here without a pod (adopted from the registry, lease lost)
    ATTACHED = "attached"  #: this replica holds its lease and a live pod
    LOST = "lost"  #: its pod died under it; the next request puts it on a fresh one
    HIBERNATED = "hibernated"  #: its state is in the store and no pod runs it
    CLOSED = "closed"  #: shut down; it is gone from the registry


class KernelHost(Protocol):
    """What a kernel uses of the gateway (the :class:`KCRKernelManager` provides it)."""

    pool: PodPool
    store: KernelStore
    files: WorkspaceSync | None
    leases: LeaseKeeper
    checkpointer: Checkpointer
    file_saver: KCRFileSaver
    start_timeout: float
    kernel_info_cache: dict[str, dict]  #: language -> the runner's kernel_info

    def new_runner(self, pod: Pod) -> RunnerClient:
        """A client for ``pod``'s runner (not connected yet)."""

    async def restart(self, kernel_id: str) -> None:
        """A client's ``shutdown_request`` with ``restart: true``."""

    async def remove(self, kernel_id: str) -> None:
        """A client's ``shutdown_request``: shut the kernel down everywhere."""


class RemoteKernel(LoggingConfigurable):
    """One kernel: a :class:`KernelSession`, and maybe a pod behind it.

    It is the ``parent`` of every WebSocket connection to the kernel (the
    role a ``KernelManager`` plays in jupyter_server). ``state`` says where it
    is (:class:`KernelState`); the transition methods below are the only code
    that changes it, each under :attr:`lock` (one move at a time).
    ``checkpoint_lock`` keeps a checkpoint and a pod move apart.
    """

    kernel_id = Unicode()
    kernel_name = Unicode()
    language = Unicode()
    username = Unicode("")
    user = Unicode("", help="The identity that started the kernel (its owner).")
    env = Dict()
    connections = Integer(0)
    created = Float()
    session: KernelSession
    pod: Pod | None = None
    runner: RunnerClient | None = None

    def __init__(self, host: KernelHost, record: dict | None = None, **kw):
        super().__init__(**kw)
        record = record or {}
        self.host = host
        self.created = record.get("created") or time.time()
        self.last_activity: float = record.get("last_activity") or time.time()
        self.last_checkpoint: float | None = record.get("checkpointed")  # state last saved
        #: the replica that ran it when its record was read ("" for a new kernel)
        self.registry_owner: str = (
            "" if record.get("state") == "hibernated" else record.get("owner") or ""
        )
        self.state = (
            KernelState.HIBERNATED if record.get("state") == "hibernated" else KernelState.DETACHED
        )
        self.lock = asyncio.Lock()
        self.checkpoint_lock = asyncio.Lock()
        self.lost_reason: str | None = None  # why the pod went, for the resume notice
        self.stop_reason: asyncio.Future | None = None  # the backend's word on that death
        self.dirty = False  # code ran since the last checkpoint
        self.interrupts_seen: set[str] = set()
        #: the runner's workspace fingerprint after the last cell (None: not known); the
        #: code API diffs files by it and the files listing reports it as its `version`
        self.workspace_fingerprint: str | None = None
        self.state_size: int | None = None  # bytes of the last checkpoint this replica saved
        self.tasks = TaskOwner(f"kernel {self.kernel_id}", self.log)
        self.files = KernelFileSaver(self, host.file_saver)
        #: files whose last change never reached the store before the kernel's pod went
        #: (kept in the record; named in the next resume notice)
        self.files_left_behind: list[str] = list(record.get("unsaved_files") or [])
        self.session = self._new_session()
        # Answer kernel_info of a kernel adopted without a pod (after a gateway restart).
        self.session.kernel_info = dict(host.kernel_info_cache.get(self.language) or {})

    # -- views ------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self.state is KernelState.ATTACHED

    @property
    def execution_state(self) -> str:
        """``hibernated`` for a kernel without a pod (hibernated, pod lost, adopted after this
        gateway restarted) unless a request is resuming it (``busy``); ``idle`` for one the
        registry says another replica runs; else the session's."""
        if self.attached or not self.session.idle:
            return self.session.execution_state
        if self.state is KernelState.DETACHED and self.registry_owner not in ("", self.host_owner):
            return "idle"  # on another replica, as far as this one knows
        return "hibernated"

    @property
    def host_owner(self) -> str:
        leases = getattr(self.host, "leases", None)
        return getattr(leases, "owner", "")

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
            "user": self.user,
            "env": self.env,
            "created": self.created,
            "last_activity": self.last_activity,
            "state": state,
            "owner": owner,
            "checkpointed": self.last_checkpoint,
            "unsaved_files": self.files_left_behind,
        }

    async def save_record(self) -> None:
        """Write the kernel's registry record ("running" or "hibernated"); failures are logged."""
        state = "hibernated" if self.state is KernelState.HIBERNATED else "running"
        try:
            await self.host.store.put_kernel(
                self.kernel_id, self.record(state, self.host.leases.owner)
            )
        except StoreError as e:
            self.log.warning("Kernel %s: registry update failed: %s", self.kernel_id, e)

    # -- the session's hooks ------------------------------------------------------

    def _new_session(self) -> KernelSession:
        async def on_shutdown(restart: bool) -> None:
            if restart:
                await self.host.restart(self.kernel_id)
            else:
                await self.host.remove(self.kernel_id)

        return KernelSession(
            self.kernel_id,
            username=self.username or "kcr",
            explain_loss=self._explain_loss,
            on_shutdown=on_shutdown,
            on_activity=lambda _msg_type: self.touch(),
            before_request=self._before_request,
            after_execute=self._after_execute,
        )

    async def _explain_loss(self) -> str | None:
        """Why the pod stopped, where the backend knows (its memory limit): the cell says so."""
        reason = self.stop_reason
        if reason is None:
            return None
        try:
            return await asyncio.shield(reason)
        except Exception:
            self.log.exception("Kernel %s: could not learn why its pod stopped", self.kernel_id)
            return None

    async def _before_request(self) -> None:
        # A running file sync does not hold the kernel back (a big tree can take minutes):
        # syncs of one kernel are serialized and each is incremental. Only a kernel that
        # must move to a pod first waits for it, and at most sync_wait seconds.
        if not self.attached:
            await self.settle_files()
            await self.resume()

    async def _after_execute(self, reply: dict, frame: dict) -> None:
        self.touch()
        metrics.EXECUTES.labels(language=self.language).inc()
        if reply.get("ename") == WORKER_DIED:
            self.pod_lost(self.pod, "its kernel process died")
            return
        self.dirty = True
        self.host.checkpointer.schedule(self)
        fingerprint = self.workspace_fingerprint = frame.get("workspace")
        # In the background (file_saving.KernelFileSaver): the cell's idle and the next
        # request are not held back; a sync the store fails is retried until it works.
        self.files.after_cell(fingerprint)

    # -- files --------------------------------------------------------------------

    async def settle_files(self) -> None:
        """A kernel without a pod is about to move: let the sync of its last cell finish,
        for at most ``sync_wait`` seconds; then it is abandoned (its pod is gone, so it
        can only fail) and what it could not save is named in the resume notice."""
        if self.files.running and not await self.files.settle():
            self.log.warning(
                "Kernel %s: its last file sync did not end within %ss; abandoned",
                self.kernel_id,
                self.host.file_saver.sync_wait,
            )
        self._left_behind(await self.files.abandon())

    def _left_behind(self, files: list[str]) -> None:
        for path in files:
            if path not in self.files_left_behind:
                self.files_left_behind.append(path)

    # -- transitions (each called with self.lock held unless it takes it) ---------

    async def attach(self, timeout: float) -> None:
        """DETACHED/LOST/HIBERNATED → ATTACHED: lease a pod, connect, restore files.

        Raises :class:`UnknownLanguage`, :class:`NoPodAvailable` or :class:`PodFailed`
        (the pod is released again then). Does not restore the namespace.
        """
        pool, kid = self.host.pool, self.kernel_id
        try:
            pod = await pool.acquire(self.language, kid, timeout=timeout)
        except PoolUnknownLanguage:
            raise UnknownLanguage(self.language, kid)
        except PoolExhausted as e:
            raise NoPodAvailable(self.language, str(e), kid)
        except PodStartError as e:
            raise PodFailed("start", e, kid)
        runner = pod.meta.pop("runner", None)  # connected while the pod was warm
        try:
            if runner is None or runner.lost:
                runner = self.host.new_runner(pod)
                await runner.connect()
            runner.on_lost = lambda: self.pod_lost(pod, "its pod stopped")
            if runner.lost:  # died between the pool's check and now
                raise RunnerError("the pod's runner went away")
            if self.env:
                await runner.set_env({k: str(v) for k, v in self.env.items()})
            cache = self.host.kernel_info_cache
            info = cache.get(self.language)
            if info is None:
                info = cache[self.language] = await runner.kernel_info()
            if self.host.files is not None:
                await self.host.files.restore(kid, runner)
            await self.session.attach_runner(runner, info)
        except RunnerError as e:  # RestoreFailed is a RunnerError too
            runner.close()
            await pool.release(pod)
            raise PodFailed("files" if isinstance(e, RestoreFailed) else "connect", e, kid)
        self.pod, self.runner = pod, runner
        self.registry_owner = ""  # this replica's now
        self.files.new_pod()  # a new pod: its first cell syncs
        self.lost_reason = None
        self.stop_reason = None
        self.state = KernelState.ATTACHED

    async def start(self, timeout: float) -> None:
        """A new kernel (its lease already held): put it on a pod and register it."""
        async with self.lock:
            await self.attach(timeout)
        await self.save_record()

    async def drop_pod(self, *, save_files: bool = True) -> None:
        """ATTACHED → DETACHED: detach and destroy the pod (no checkpoint).

        The workspace is saved first (``save_files``; within ``release_wait``, and what
        could not be saved is logged and named at the next resume); the pod is released
        whatever else fails (a pod is never leaked). ``lost_reason`` is kept for the next
        resume.
        """
        try:
            if save_files:
                await self._save_files_before_release()
            else:
                await self.files.abandon()
            self.host.checkpointer.cancel(self)
            runner = self.session.detach_runner()
            if runner is not None:
                runner.close()
        finally:
            pod, self.pod, self.runner = self.pod, None, None
            if self.state is KernelState.ATTACHED:
                self.state = KernelState.DETACHED
            if pod is not None:
                await self.host.pool.release(pod)

    async def _save_files_before_release(self) -> None:
        """The pod is released now whatever happens: save what can be saved within
        ``release_wait``; files that could not be are logged and kept for the notice."""
        if self.runner is None:
            self._left_behind(await self.files.abandon())
            return
        unsaved = await self.files.save_before_release()
        unsaved = sorted(set(unsaved) | set(await self.files.abandon()))
        self._release_unsaved(unsaved)

    def _release_unsaved(self, unsaved: list[str]) -> None:
        if unsaved:
            self.log.warning(
                "Kernel %s: its pod is released with %d file(s) not saved (their last saved "
                "version, if any, comes back): %s",
                self.kernel_id,
                len(unsaved),
                name_files(unsaved, 20),
            )
            self._left_behind(unsaved)

    def pod_lost(self, pod: Pod | None, why: str) -> None:
        """ATTACHED → LOST: ``pod`` died under the kernel (called by the runner or a reply)."""
        if pod is None or self.pod is not pod or self.state is not KernelState.ATTACHED:
            return
        self.log.warning("Kernel %s lost pod %s: %s", self.kernel_id, pod.name, why)
        self.lost_reason = why
        self.state = KernelState.LOST
        runner = self.session.detach_runner()
        if runner is not None:
            runner.close()
        self.pod = self.runner = None
        # Ask the backend why (an OOMKilled pod) before the pod is deleted with its status.
        self.stop_reason = self.tasks.spawn(
            self.host.pool.backend.stop_reason(pod), f"stop reason of pod {pod.name}"
        )
        self.tasks.spawn(
            self._release_lost(pod, self.stop_reason), f"release of lost pod {pod.name}"
        )

    async def _release_lost(self, pod: Pod, reason: asyncio.Future) -> None:
        with contextlib.suppress(Exception):
            await reason
        await self.host.pool.lost(pod)

    async def resume(self, *, restore_state: bool = True) -> None:
        """→ ATTACHED: a fresh pod with the kernel's files and last checkpoint.

        Takes the kernel's lease first (asking another replica to hand it over);
        the user is told on stderr what was and was not restored.
        """
        async with self.lock:
            if self.attached:
                return
            lost_reason = self.lost_reason
            if self.pod is not None:
                await self.drop_pod()
            await self.host.leases.take(self.kernel_id, on_wait=self.session.tell_user)
            await self.attach(self.host.start_timeout)
            result = None
            if restore_state:
                result = await self.host.checkpointer.restore(self)
            left_behind, self.files_left_behind = self.files_left_behind, []
            await self.save_record()
        notice = resume_notice(lost_reason, result, self.last_checkpoint)
        if left_behind:
            head = notice.rstrip("\n") or "[kcr] The kernel moved to a new pod."
            notice = (
                f"{head} Not saved before its old pod went (their last saved version, if "
                f"any, is back): {name_files(left_behind)}.\n"
            )
        if self.session.move_notes:  # comms and debug sessions stay behind with the pod
            head = notice.rstrip("\n") or "[kcr] The kernel moved to a new pod."
            notice = " ".join([head, *self.session.move_notes]) + "\n"
            self.session.move_notes = []
        if notice:
            self.session.tell_user(notice)
        self.log.info(
            "Kernel %s resumed on pod %s%s",
            self.kernel_id,
            self.pod.name,
            f" after {lost_reason}" if lost_reason else "",
        )

    async def hibernate(self, reason: str, *, must: bool = False) -> bool:
        """ATTACHED → HIBERNATED: checkpoint and save the files, then release pod and lease.

        False (and still attached) when the state could not be saved, or when files are
        not in the file store yet (the pod keeps them; try again later). With ``must``
        (gateway shutdown) unsaved files do not stop it: they are named in the log and in
        the resume notice.
        """
        async with self.lock, self.checkpoint_lock:  # waits for a checkpoint in flight
            if not self.attached:
                return True
            if self.dirty:
                result = await self.host.checkpointer.checkpoint_locked(self, quiet=True)
                if result is not None and not result.saved:
                    self.log.warning(
                        "Kernel %s not hibernated (%s): %s", self.kernel_id, reason, result.error
                    )
                    return False
            unsaved = await self.files.save_before_release()
            if unsaved and not must:
                self.log.warning(
                    "Kernel %s not hibernated (%s): %d file(s) not saved yet (%s); its pod "
                    "keeps them until the file store has them",
                    self.kernel_id,
                    reason,
                    len(unsaved),
                    name_files(unsaved, 20),
                )
                return False
            self._release_unsaved(unsaved)
            await self.drop_pod(save_files=False)
            self.state = KernelState.HIBERNATED
            await self.save_record()
            await self.host.leases.release(self.kernel_id)
        self.log.info("Kernel %s hibernated (%s)", self.kernel_id, reason)
        return True

    async def restart(self) -> None:
        """→ ATTACHED on a fresh pod with the kernel's files but without its state.

        Queued requests are aborted; connected WebSockets keep working.
        """
        session = self.session
        async with self.lock:
            # "starting", as a freshly started kernel says: on iopub, "restarting" tells
            # JupyterLab the kernel died and was auto-restarted ("appears to have died").
            session.set_state("starting")
            session.reset_queue("the kernel was restarted")
            await self.host.leases.take(self.kernel_id)
            async with self.checkpoint_lock:  # no checkpoint of the old pod lands after this
                await self.drop_pod()
                self.dirty = False
                await quietly(self.host.store.delete_state(self.kernel_id), self.log)
            await self.attach(self.host.start_timeout)
            left_behind, self.files_left_behind = self.files_left_behind, []
            await self.save_record()
        self.touch()
        if left_behind:
            session.tell_user(
                "[kcr] warning: not saved before the restart (their last saved version, if "
                f"any, is back): {name_files(left_behind)}.\n"
            )
        self.log.info("Kernel %s restarted on pod %s", self.kernel_id, self.pod.name)

    async def shutdown(self, forget: Callable[[], object]) -> None:
        """→ CLOSED: close the session, destroy the pod, delete record, state and files.

        ``forget`` is called once the lease is held (the manager drops the kernel from
        its mapping then). The pod is released and the record deleted whatever fails
        in between; only a lease held elsewhere or a registry failure stops it early.
        """
        kid = self.kernel_id
        async with self.lock:
            await self.host.leases.take(kid)
            forget()
            try:
                await self.session.close()
            except Exception:  # never keeps the pod: it is freed below whatever happened
                self.log.exception("Kernel %s: closing its session failed", kid)
            finally:
                try:
                    await self.drop_pod(save_files=False)  # its files are deleted below
                finally:
                    self.state = KernelState.CLOSED
                    await quietly(self.host.store.delete_kernel(kid), self.log)
                    if self.host.files is not None:
                        await quietly(self.host.files.forget(kid), self.log)
        await self.tasks.drain()
        self.log.info("Kernel %s shut down", kid)


def resume_notice(lost_reason: str | None, result, last_checkpoint: float | None) -> str:
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

"""Moves a kernel's working files between its pod's runner and the file store.

The file store (``kcr_kernels.stores``) is the source of truth between cells; the pod's
workspace is a working copy. The gateway calls:

* :meth:`WorkspaceSync.restore` whenever a kernel gets a pod (start, restart, recovery,
  resume), before the first cell runs: every stored file is put into the workspace;
* :meth:`WorkspaceSync.sync` after every cell: files created, changed or deleted in the
  workspace are pushed to / removed from the store. Changes are found from the runner's
  listing (size + sha256, which the runner computes) against what was last synced, so only
  changed files move;
* :meth:`WorkspaceSync.forget` when the kernel is deleted.

The files API (``kcr_gateway.files``) uses :meth:`WorkspaceSync.put_file`,
:meth:`WorkspaceSync.delete_files` and :meth:`WorkspaceSync.list_files`.

Pods never hold store credentials: bytes flow runner → gateway → store and back, streamed
in chunks through a small bounded queue (:class:`ChunkPipe`), never a whole file in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .runner_client import RunnerClient, RunnerError, RunnerGone
from .stores import (
    FileEntry,
    FileNotFound,
    FileStore,
    FileTooLarge,
    InvalidPath,
    StoreError,
    validate_path,
)

log = logging.getLogger("kcr.workspace_sync")

T = TypeVar("T")

#: Files the runner creates while it writes an upload atomically; never synced.
_RUNNER_TEMP_PREFIX = ".kcr-upload-"
#: Files checked per event-loop turn when a sync compares a listing with the store.
_YIELD_EVERY = 256
#: How many files move at once (per kernel) during restore and sync.
_PARALLEL = 8


def human_size(n: int | None) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    if n is None:
        return "unknown size"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


class QuotaExceeded(Exception):
    """A file would go over ``max_file_bytes`` or the kernel over ``max_kernel_bytes``.

    ``str(err)`` is a message for the user (the files API answers 413 with it).
    """


class RestoreFailed(RunnerError):
    """The kernel's files could not be put into its new pod (store or runner unreachable).

    A :class:`RunnerError`, so a caller that fails a pod attach on runner errors fails it
    on this too; the message names the cause.
    """


@dataclass(frozen=True)
class SkippedFile:
    """A workspace file that was not stored: ``reason`` is ``file_too_large``,
    ``kernel_quota``, ``file_count``, ``bad_name`` or ``error``; ``message`` says it for the
    user (empty for ``file_count``: those are summed up in one line of the notices)."""

    path: str
    size: int | None
    reason: str
    message: str


@dataclass
class SyncResult:
    """What one :meth:`WorkspaceSync.sync` did.

    ``uploaded``/``deleted``: paths pushed to / removed from the store. ``skipped``: files
    newly left out (each version of a file is reported once, not after every cell).
    ``error``: why the sync stopped early (store or runner unreachable), else ``None``.
    ``warning``: all of that as text for the user's stderr, or ``None`` when all is well.
    """

    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    @property
    def warning(self) -> str | None:
        lines = [s.message for s in self.skipped if s.message] + list(self.notices)
        if self.error:
            lines.append(f"the kernel's files could not be saved: {self.error}")
        return "\n".join(lines) if lines else None


@dataclass
class _KernelFiles:
    """What the gateway knows of one kernel's files (in memory, rebuilt on restore)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: path → (size, sha256) of the store's copy, as of the last restore/sync.
    synced: dict[str, tuple[int, str | None]] | None = None
    #: True once a restore succeeded: only then are files missing from the pod deleted.
    complete: bool = False
    #: in the store but not in the pod (could not be put there): never deleted by a sync.
    pinned: set[str] = field(default_factory=set)
    #: path → sha256 of the version already reported as skipped.
    warned: dict[str, str | None] = field(default_factory=dict)
    #: API uploads in progress: a sync leaves these paths alone.
    uploading: set[str] = field(default_factory=set)
    #: messages waiting for the next sync result (e.g. a file restore failed).
    notices: list[str] = field(default_factory=list)


class ChunkPipe:
    """A bounded hand-off of byte chunks from a producer to one async-iterating consumer.

    The producer awaits :meth:`put` (back-pressure: at most ``depth`` chunks wait) and calls
    :meth:`finish` or :meth:`fail`. The consumer iterates the pipe once. If the consumer
    stops early, later :meth:`put` calls return at once and drop their chunk, so a producer
    never blocks on a consumer that is gone.
    """

    _END = object()

    def __init__(self, depth: int = 8):
        self._queue: asyncio.Queue = asyncio.Queue(depth)
        self._gone = False
        self.received = 0

    async def put(self, chunk: bytes) -> None:
        if self._gone or not chunk:
            return
        self.received += len(chunk)
        await self._queue.put(bytes(chunk))

    async def finish(self) -> None:
        if not self._gone:
            await self._queue.put(self._END)

    async def fail(self, error: BaseException) -> None:
        if not self._gone:
            await self._queue.put(error)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._gone = True
            while not self._queue.empty():  # wake a producer blocked on a full queue
                self._queue.get_nowait()


async def pipe_through(
    produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
    consume: Callable[[AsyncIterable[bytes]], Awaitable[T]],
    depth: int = 8,
) -> T:
    """Run ``produce(put)`` and ``consume(chunks)`` together over a :class:`ChunkPipe`.

    Returns what ``consume`` returns. If the producer fails, the consumer is cancelled
    and the producer's error raised; if the consumer stops (or fails), the producer is
    cancelled.
    """
    pipe = ChunkPipe(depth)

    async def producer() -> None:
        await produce(pipe.put)
        await pipe.finish()

    prod = asyncio.ensure_future(producer())
    cons = asyncio.ensure_future(consume(pipe))
    try:
        await asyncio.wait({prod, cons}, return_when=asyncio.FIRST_COMPLETED)
        if prod.done() and prod.exception() is not None and not cons.done():
            cons.cancel()
            with contextlib.suppress(BaseException):
                await cons
            raise prod.exception()
        result = await cons
        if not prod.done():
            prod.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prod  # a producer error after the consumer finished is still an error
        return result
    finally:
        for task in (prod, cons):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class WorkspaceSync:
    """Moves a kernel's files between its pod's runner and the file store.

    Contract:

    * :meth:`restore` puts every stored file of the kernel into a fresh pod's workspace
      and returns how many it copied. It raises :class:`RestoreFailed` when the store
      cannot be listed or the runner is gone; a single file the pod refuses is left in the
      store (never deleted by a later sync) and reported in the next :class:`SyncResult`.
    * :meth:`sync` pushes created/changed files (size or sha256 differ from the last
      synced version) and deletes files removed from the workspace. Files over
      ``max_file_bytes``, files that would take the kernel over ``max_kernel_bytes``, new
      files beyond ``max_kernel_files`` (in path order; reported in one line) and
      names the store refuses are not stored and are reported once per version in
      :attr:`SyncResult.skipped`; the store keeps any previous version of such a file. It
      never raises for a store or runner outage: the result carries the error, and the
      next sync retries what did not move. Deletions propagate only after a successful
      :meth:`restore` in this process (until then the pod's view may be incomplete).
    * :meth:`put_file` / :meth:`delete_files` / :meth:`list_files` / :meth:`sync_then_read`
      serve the files API; uploads check the quotas first (:class:`QuotaExceeded`).
    * :meth:`forget` deletes the kernel's files from the store.

    Calls for one kernel are serialized; different kernels run in parallel. Symlinks in
    the workspace are never synced (the runner lists regular files only).
    """

    def __init__(
        self,
        store: FileStore,
        *,
        max_file_bytes: int | None,
        max_kernel_bytes: int | None,
        max_kernel_files: int | None = None,
        log: logging.Logger | None = None,
    ):
        self.store = store
        self.max_file_bytes = max_file_bytes or None
        self.max_kernel_bytes = max_kernel_bytes or None
        self.max_kernel_files = max_kernel_files or None
        self.log = log or globals()["log"]
        self._kernels: dict[str, _KernelFiles] = {}

    def _state(self, kernel_id: str) -> _KernelFiles:
        state = self._kernels.get(kernel_id)
        if state is None:
            state = self._kernels[kernel_id] = _KernelFiles()
        return state

    # -- pod lifecycle ----------------------------------------------------------------------

    async def restore(self, kernel_id: str, runner: RunnerClient) -> int:
        """Put every stored file of the kernel into the (fresh) pod's workspace; returns
        files copied. Called on start, restart, recovery and resume, before the first
        cell runs."""
        state = self._state(kernel_id)
        async with state.lock:
            try:
                entries = await self.store.list(kernel_id)
            except StoreError as e:
                raise RestoreFailed(f"the kernel's files could not be listed: {e}") from e
            pinned: set[str] = set()
            notices: list[str] = []
            semaphore = asyncio.Semaphore(_PARALLEL)

            async def copy(entry: FileEntry) -> bool:
                async with semaphore:
                    try:
                        await self._store_to_pod(kernel_id, entry.path, runner, entry.size)
                        return True
                    except RunnerGone:
                        raise
                    except (RunnerError, StoreError) as e:
                        pinned.add(entry.path)
                        notices.append(
                            f"{entry.path} ({human_size(entry.size)}) is saved but could not "
                            f"be put into this pod's workspace: {e}"
                        )
                        return False

            try:
                copied = await asyncio.gather(*(copy(e) for e in entries))
            except RunnerGone as e:
                raise RestoreFailed(f"the kernel's files could not be restored: {e}") from e
            state.synced = {e.path: (e.size, e.sha256) for e in entries}
            state.complete = True
            state.pinned = pinned
            state.warned.clear()
            state.notices.extend(notices)
            for notice in notices:
                self.log.warning("kernel %s: %s", kernel_id, notice)
            return sum(copied)

    async def sync(self, kernel_id: str, runner: RunnerClient) -> SyncResult:
        """After a cell: push created/changed files to the store and delete removed ones
        (only changes move). Never raises for a store or runner outage."""
        state = self._state(kernel_id)
        async with state.lock:
            return await self._sync_locked(kernel_id, state, runner)

    async def forget(self, kernel_id: str) -> None:
        """The kernel was deleted: remove its files from the store."""
        state = self._kernels.pop(kernel_id, None)
        if state is not None:
            async with state.lock:
                await self.store.delete_all(kernel_id)
        else:
            await self.store.delete_all(kernel_id)

    # -- the sync itself ----------------------------------------------------------------------

    async def _sync_locked(
        self, kernel_id: str, state: _KernelFiles, runner: RunnerClient
    ) -> SyncResult:
        started = time.perf_counter()
        result = SyncResult(notices=state.notices[:])
        state.notices.clear()
        try:
            listing = (await runner.call_json("GET", "/files"))["files"]
        except (RunnerError, KeyError, TypeError, ValueError) as e:
            result.error = f"the pod's files could not be listed: {e}"
            result.seconds = time.perf_counter() - started
            return result
        try:
            if state.synced is None:  # no restore in this process: compare with the store
                state.synced = {
                    e.path: (e.size, e.sha256) for e in await self.store.list(kernel_id)
                }
                state.complete = False
            await self._apply(kernel_id, state, runner, listing, result)
        except StoreError as e:
            result.error = str(e)
        except RunnerGone as e:
            result.error = f"the pod went away during the sync: {e}"
        result.seconds = time.perf_counter() - started
        if result.uploaded or result.deleted or result.error:
            self.log.debug(
                "kernel %s: synced %d up, %d deleted in %.1f ms%s",
                kernel_id,
                len(result.uploaded),
                len(result.deleted),
                result.seconds * 1e3,
                f" ({result.error})" if result.error else "",
            )
        return result

    async def _apply(
        self,
        kernel_id: str,
        state: _KernelFiles,
        runner: RunnerClient,
        listing: list[dict[str, Any]],
        result: SyncResult,
    ) -> None:
        synced = state.synced
        assert synced is not None
        pod: dict[str, dict[str, Any]] = {}
        for item in listing:
            if item.get("type", "file") != "file":
                continue  # a symlink made by kernel code: never followed, never synced
            name = item["path"].rsplit("/", 1)[-1]
            if not name.startswith(_RUNNER_TEMP_PREFIX):
                pod[item["path"]] = item

        if state.complete:
            gone = sorted(set(synced) - set(pod) - state.pinned - state.uploading)
            await self._gather([self._delete_one(kernel_id, p, state, result) for p in gone])
        # Files deleted from the pod no longer need a warning.
        for path in list(state.warned):
            if path not in pod:
                del state.warned[path]

        usage = sum(size for size, _ in synced.values())
        count = len(synced)
        over_count: list[str] = []
        jobs = []
        for n, (path, item) in enumerate(sorted(pod.items()), 1):
            if n % _YIELD_EVERY == 0:  # a big tree must not hold the event loop in one go
                await asyncio.sleep(0)
            size, sha = int(item["size"]), item.get("sha256")
            if path in state.uploading or synced.get(path) == (size, sha):
                continue
            old_size = synced.get(path, (0, None))[0]
            if path not in synced and self.max_kernel_files is not None:
                if count >= self.max_kernel_files:
                    if state.warned.get(path, "\0") != sha:
                        state.warned[path] = sha
                        over_count.append(path)
                        result.skipped.append(SkippedFile(path, size, "file_count", ""))
                    continue
                count += 1
            skip = self._check_pod_file(path, size, usage - old_size)
            if skip is not None:
                if state.warned.get(path, "\0") != sha:
                    state.warned[path] = sha
                    result.skipped.append(skip)
                continue
            state.warned.pop(path, None)
            usage += size - old_size
            limit = self._limit_for(usage - size)
            jobs.append(self._push_one(kernel_id, runner, item, limit, state, result))
        if over_count:
            first = ", ".join(over_count[:3]) + (", ..." if len(over_count) > 3 else "")
            result.notices.append(
                f"{len(over_count)} new file(s) were not saved ({first}): the kernel already "
                f"has {self.max_kernel_files} files, its limit; they stay in this pod only "
                "and are lost when the pod stops"
            )
        await self._gather(jobs)

    def _check_pod_file(self, path: str, size: int, others: int) -> SkippedFile | None:
        """Why ``path`` (``size`` bytes; the kernel's other files take ``others``) cannot be
        stored, or ``None``."""
        keep = "it stays in this pod only and is lost when the pod stops"
        try:
            validate_path(path)
        except InvalidPath as e:
            return SkippedFile(
                path, size, "bad_name", f"{path!r} was not saved: {e.detail}; {keep}"
            )
        if self.max_file_bytes is not None and size > self.max_file_bytes:
            return SkippedFile(
                path,
                size,
                "file_too_large",
                f"{path} ({human_size(size)}) was not saved: it is over the per-file limit "
                f"of {human_size(self.max_file_bytes)}; {keep}",
            )
        if self.max_kernel_bytes is not None and others + size > self.max_kernel_bytes:
            return SkippedFile(
                path,
                size,
                "kernel_quota",
                f"{path} ({human_size(size)}) was not saved: the kernel's files would take "
                f"{human_size(others + size)}, over the kernel's limit of "
                f"{human_size(self.max_kernel_bytes)}; {keep}",
            )
        return None

    def _limit_for(self, others: int) -> int | None:
        """The most bytes one file may have when the kernel's other files take ``others``."""
        limits = [self.max_file_bytes] if self.max_file_bytes is not None else []
        if self.max_kernel_bytes is not None:
            limits.append(max(self.max_kernel_bytes - others, 0))
        return min(limits) if limits else None

    async def _push_one(
        self,
        kernel_id: str,
        runner: RunnerClient,
        item: dict[str, Any],
        max_bytes: int | None,
        state: _KernelFiles,
        result: SyncResult,
    ) -> None:
        path = item["path"]
        try:
            entry = await self._pod_to_store(
                kernel_id, path, runner, max_bytes=max_bytes, mtime=item.get("mtime")
            )
        except FileTooLarge:  # it grew after the listing
            result.skipped.append(
                SkippedFile(
                    path,
                    None,
                    "file_too_large",
                    f"{path} grew past the file limit while it was being saved; not saved",
                )
            )
            return
        except RunnerGone:
            raise
        except RunnerError as e:
            if e.status == 404:  # deleted since the listing: the next sync handles it
                return
            result.skipped.append(SkippedFile(path, item["size"], "error", f"{path}: {e}"))
            return
        except InvalidPath as e:  # e.g. a file where the store has a folder
            result.skipped.append(
                SkippedFile(path, item["size"], "bad_name", f"{path!r} was not saved: {e.detail}")
            )
            return
        assert state.synced is not None
        state.synced[path] = (entry.size, entry.sha256)
        state.pinned.discard(path)
        result.uploaded.append(path)

    async def _delete_one(
        self, kernel_id: str, path: str, state: _KernelFiles, result: SyncResult
    ) -> None:
        await self.store.delete(kernel_id, path)
        assert state.synced is not None
        state.synced.pop(path, None)
        result.deleted.append(path)

    @staticmethod
    async def _gather(jobs: list[Awaitable[None]]) -> None:
        """Run ``jobs`` at most ``_PARALLEL`` at a time; the first error is raised after
        every job has ended (so the bookkeeping of the others is complete)."""
        semaphore = asyncio.Semaphore(_PARALLEL)

        async def bounded(job: Awaitable[None]) -> None:
            async with semaphore:
                await job

        outcomes = await asyncio.gather(*(bounded(j) for j in jobs), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # -- byte movers ------------------------------------------------------------------------

    async def _pod_to_store(
        self,
        kernel_id: str,
        path: str,
        runner: RunnerClient,
        *,
        max_bytes: int | None,
        mtime: float | None,
    ) -> FileEntry:
        return await pipe_through(
            lambda put: runner.stream_file_get(path, put),
            lambda chunks: self.store.write(
                kernel_id, path, chunks, max_bytes=max_bytes, mtime=mtime
            ),
        )

    async def _store_to_pod(
        self, kernel_id: str, path: str, runner: RunnerClient, size: int | None
    ) -> None:
        await runner.stream_file_put(path, self.store.read(kernel_id, path), size=size)

    # -- files API ------------------------------------------------------------------------

    async def check_upload(self, kernel_id: str, path: str, size: int | None) -> int | None:
        """Check an upload of ``size`` bytes (``None``: unknown) to ``path`` against the
        quotas before its body arrives. Returns the most bytes the upload may have
        (``None``: no limit); raises :class:`QuotaExceeded` or :class:`InvalidPath`."""
        validate_path(path)
        if self.max_kernel_files is not None:
            paths = {e.path for e in await self.store.list(kernel_id)}
            if path not in paths and len(paths) >= self.max_kernel_files:
                raise QuotaExceeded(
                    f"{path} is a new file and the kernel already has {len(paths)} files, "
                    f"its limit of {self.max_kernel_files}"
                )
        if size is not None and self.max_file_bytes is not None and size > self.max_file_bytes:
            raise QuotaExceeded(
                f"{path} ({human_size(size)}) is over the per-file limit of "
                f"{human_size(self.max_file_bytes)}"
            )
        if self.max_kernel_bytes is None:
            return self.max_file_bytes
        others = sum(e.size for e in await self.store.list(kernel_id) if e.path != path)
        room = self.max_kernel_bytes - others
        if (size or 0) > room:
            raise QuotaExceeded(
                f"{path} ({human_size(size)}) does not fit: the kernel's other files take "
                f"{human_size(others)} of its {human_size(self.max_kernel_bytes)} limit"
            )
        return room if self.max_file_bytes is None else min(room, self.max_file_bytes)

    async def put_file(
        self,
        kernel_id: str,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int | None,
        kernel: Any = None,
    ) -> tuple[FileEntry, str | None]:
        """Store an upload, then put it into the kernel's live pod (if it has one).

        ``kernel`` is the gateway's kernel object (``.lock``: held while it changes pods;
        ``.runner``: its RunnerClient or ``None``); the pod step runs under that lock.
        Returns ``(entry, warning)``; ``warning`` says why the file is stored but not in
        the pod (e.g. the pod refused its size). Raises :class:`QuotaExceeded` (over
        ``max_bytes``), :class:`InvalidPath`, and :class:`RunnerError` with status 400/403
        when the pod refuses the path (then nothing is kept).
        """
        validate_path(path)
        state = self._state(kernel_id)
        state.uploading.add(path)
        try:
            try:
                entry = await self.store.write(kernel_id, path, chunks, max_bytes=max_bytes)
            except FileTooLarge as e:
                raise QuotaExceeded(self._upload_limit_text(path, e.limit)) from e
            pod_lock = getattr(kernel, "lock", None) or contextlib.nullcontext()
            async with pod_lock, state.lock:
                live = getattr(kernel, "runner", None)
                warning = None
                if live is not None:
                    warning = await self._put_into_pod(kernel_id, path, live, entry, state)
                if state.synced is not None:
                    state.synced[path] = (entry.size, entry.sha256)
                state.warned.pop(path, None)
                return entry, warning
        finally:
            state.uploading.discard(path)

    async def _put_into_pod(
        self,
        kernel_id: str,
        path: str,
        runner: RunnerClient,
        entry: FileEntry,
        state: _KernelFiles,
    ) -> str | None:
        try:
            await self._store_to_pod(kernel_id, path, runner, entry.size)
        except RunnerGone as e:
            # The pod is going away; the next pod gets the file from the store.
            return f"stored, but the kernel's pod did not answer ({e})"
        except RunnerError as e:
            if e.status in (400, 403):  # the pod refuses the path (e.g. a symlink escapes)
                await self.store.delete(kernel_id, path)
                raise
            state.pinned.add(path)
            return f"stored, but not put into the kernel's workspace: {e}"
        state.pinned.discard(path)
        return None

    def _upload_limit_text(self, path: str, limit: int) -> str:
        if self.max_file_bytes is not None and limit >= self.max_file_bytes:
            return f"{path} is over the per-file limit of {human_size(self.max_file_bytes)}"
        return (
            f"{path} does not fit in the kernel's limit of {human_size(self.max_kernel_bytes)} "
            f"(at most {human_size(limit)} left)"
        )

    async def delete_files(self, kernel_id: str, path: str, runner: RunnerClient | None) -> int:
        """Delete ``path`` (a file, or a folder with everything under it) from the store and
        the live pod; returns how many stored files went (0: nothing there)."""
        validate_path(path)
        state = self._state(kernel_id)
        async with state.lock:
            entries = await self.store.list(kernel_id)
            doomed = [e.path for e in entries if e.path == path or e.path.startswith(path + "/")]
            await self._gather([self.store.delete(kernel_id, p) for p in doomed])
            for p in doomed:
                if state.synced is not None:
                    state.synced.pop(p, None)
                state.pinned.discard(p)
            if runner is not None:
                try:
                    await runner.call("DELETE", "/files/" + _quote(path))
                except RunnerError as e:
                    if e.status not in (404, None) and not isinstance(e, RunnerGone):
                        raise
            return len(doomed)

    async def list_files(
        self, kernel_id: str, runner: RunnerClient | None
    ) -> tuple[list[FileEntry], SyncResult | None]:
        """Sync the live pod (if any), then list the store: ``(entries, sync result)``."""
        result = await self.sync(kernel_id, runner) if runner is not None else None
        return await self.store.list(kernel_id), result

    async def sync_then_read(
        self, kernel_id: str, path: str, runner: RunnerClient | None, chunk_size: int = 1 << 20
    ) -> tuple[AsyncIterator[bytes], SyncResult | None]:
        """Sync the live pod (if any), then open the stored file: ``(chunks, sync result)``.

        Raises :class:`FileNotFound` before returning when there is no such file."""
        validate_path(path)
        result = await self.sync(kernel_id, runner) if runner is not None else None
        chunks = self.store.read(kernel_id, path, chunk_size)
        first = await _first(chunks)  # raises FileNotFound now, not mid-response
        return _prepend(first, chunks), result


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


async def _first(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


__all__ = [
    "ChunkPipe",
    "FileNotFound",
    "QuotaExceeded",
    "RestoreFailed",
    "SkippedFile",
    "SyncResult",
    "WorkspaceSync",
    "human_size",
    "pipe_through",
]

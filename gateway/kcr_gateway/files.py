"""The files API: a kernel's working files, from the file store, streamed both ways.

Routes (add :func:`files_handlers` under the gateway's ``base_url``):

* ``GET /api/kernels/{id}/files`` → ``{"files": [{"path", "size", "mtime", "sha256",
  "content_type"}], "sync_error": null | "...", "version": ...}``, sorted by path
  (``?unless=VERSION``: ``{"unchanged": true}`` when nothing changed since that listing);
* ``GET /api/kernels/{id}/files/{path}`` → the bytes (``Content-Type`` guessed from the name);
* ``PUT /api/kernels/{id}/files/{path}`` (body = the bytes) → 201 and the file's model;
  folders are created as needed; an existing file is replaced;
* ``DELETE /api/kernels/{id}/files/{path}`` → 204 (a folder goes with everything in it).

The store is the source of truth between cells. A listing or download first syncs the
kernel's live pod (so a file the last cell wrote is there); an upload goes to the store and
into the live pod (so the next cell sees it). Bodies stream in both directions. Errors are
JSON ``{"message", "reason"}``: 400 bad path (absolute, ``..``, odd names, a symlink in the
pod that leads out of the workspace), 404 unknown kernel or file, 413 over a quota, 503 the
file store is unreachable. Auth as for the rest of the API (``Authorization: token ...``).
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import Any
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from kcr_kernels.runner_client import RunnerError
from kcr_kernels.stores import (
    FileEntry,
    FileNotFound,
    InvalidKernelId,
    InvalidPath,
    StoreError,
    StoreUnavailable,
)
from kcr_kernels.workspace_sync import ChunkPipe, QuotaExceeded, WorkspaceSync

_KERNEL_ID = r"(?P<kernel_id>[\w-]+)"


def content_type(path: str) -> str:
    """The MIME type for ``path`` by its name; ``application/octet-stream`` if unknown."""
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def file_model(entry: FileEntry) -> dict[str, Any]:
    return {**entry.to_dict(), "content_type": content_type(entry.path)}


class _FilesBase(APIHandler):
    auth_resource = "kernels"

    @property
    def workspace_sync(self) -> WorkspaceSync:
        sync = self.settings.get("kcr_workspace_sync")
        if sync is None:
            raise web.HTTPError(404, "This gateway has no file store configured")
        return sync

    async def kernel(self, kernel_id: str) -> Any:
        """The kernel (404 if unknown); its ``.runner`` is ``None`` while it has no pod."""
        km = self.kernel_manager
        adopt = getattr(km, "adopt", None)
        if adopt is not None:
            return await adopt(kernel_id)
        return km.get_kernel(kernel_id)

    def store_failed(self, e: StoreError) -> web.HTTPError:
        if isinstance(e, (InvalidPath, InvalidKernelId)):
            return web.HTTPError(400, e.detail)
        if isinstance(e, FileNotFound):
            return web.HTTPError(404, "No such file")
        if isinstance(e, StoreUnavailable):
            return web.HTTPError(503, f"The file store is unavailable: {e}")
        return web.HTTPError(500, f"The file store failed: {e}")

    def log_sync(self, kernel_id: str, result: Any) -> str | None:
        if result is not None and result.error:
            self.log.warning(
                "kernel %s: files not synced from its pod: %s", kernel_id, result.error
            )
            return result.error
        return None


def files_version(kernel: Any) -> str | None:
    """What the kernel's files are as of its last cell: the runner's workspace fingerprint
    when the store holds exactly that (its sync finished), else ``None``."""
    version = getattr(kernel, "workspace_fingerprint", None)
    running = getattr(kernel, "file_sync", None)
    if version is None or version != getattr(kernel, "synced_workspace", None):
        return None
    if running is not None and not running.done():
        return None
    return version


class FilesListHandler(_FilesBase):
    """``GET /api/kernels/{id}/files``: every stored file of the kernel.

    The answer's ``version`` names the state listed (``None`` when unknown). With
    ``?unless=VERSION`` and nothing changed since (no cell changed a file, no sync pending),
    the answer is ``{"unchanged": true, "version": VERSION, "files": null}`` at once, without
    syncing or listing: the notebook-folder sync asks this after every cell.
    """

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        sync = self.workspace_sync
        kernel = await self.kernel(kernel_id)
        version = files_version(kernel)
        unless = self.get_query_argument("unless", None)
        if unless is not None and version is not None and unless == version:
            self.finish({"unchanged": True, "version": version, "files": None})
            return
        # A cell's fingerprint taken before the sync below: if a later cell changes files,
        # its fingerprint differs and the next ``unless`` gets a full listing.
        version = getattr(kernel, "workspace_fingerprint", None)
        try:
            async with kernel.lock:
                entries, result = await sync.list_files(kernel_id, kernel.runner)
        except StoreError as e:
            raise self.store_failed(e) from e
        error = self.log_sync(kernel_id, result)
        self.finish(
            {
                "files": [file_model(e) for e in entries],
                "sync_error": error,
                "version": None if error else version,
            }
        )


@web.stream_request_body
class FileHandler(_FilesBase):
    """``GET|PUT|DELETE /api/kernels/{id}/files/{path}``; PUT bodies stream to the store."""

    _pipe: ChunkPipe | None = None
    _upload: asyncio.Future | None = None

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method == "PUT":
            await self._start_upload()

    @web.authenticated
    @authorized
    async def _start_upload(self) -> None:
        """Checks made before the body is read (auth, kernel, path, quotas); then the body
        streams to the store as it arrives."""
        kernel_id, path = self.path_kwargs["kernel_id"], self.path_kwargs["path"]
        sync = self.workspace_sync
        kernel = await self.kernel(kernel_id)
        length = self.request.headers.get("Content-Length")
        size = int(length) if length is not None and length.isdigit() else None
        try:
            max_bytes = await sync.check_upload(kernel_id, path, size)
        except QuotaExceeded as e:
            raise web.HTTPError(413, str(e)) from e
        except StoreError as e:
            raise self.store_failed(e) from e
        # The store enforces max_bytes while it streams (a body of unknown length that goes
        # over is read to its end and dropped, then answered with 413).
        self.request.connection.set_max_body_size(1 << 50)
        self._pipe = ChunkPipe()
        self._upload = asyncio.ensure_future(
            sync.put_file(kernel_id, path, self._pipe, max_bytes=max_bytes, kernel=kernel)
        )

    async def data_received(self, chunk: bytes) -> None:
        if self._pipe is not None:
            await self._pipe.put(chunk)  # waits while the store is behind: bounded memory

    def on_connection_close(self) -> None:
        # The client went away mid-upload: cancelling the write keeps nothing of it.
        if self._upload is not None and not self._upload.done():
            self._upload.cancel()
        super().on_connection_close()

    @web.authenticated
    @authorized
    async def put(self, kernel_id: str, path: str) -> None:
        await self._pipe.finish()
        try:
            entry, warning = await self._upload
        except QuotaExceeded as e:
            raise web.HTTPError(413, str(e)) from e
        except RunnerError as e:
            raise web.HTTPError(400, f"The kernel's workspace refused {path!r}: {e}") from e
        except StoreError as e:
            raise self.store_failed(e) from e
        if warning:
            self.log.warning("kernel %s: upload of %s: %s", kernel_id, path, warning)
        self.set_status(201)
        self.set_header("Location", self.request.path)
        self.finish({**file_model(entry), "warning": warning})

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str, path: str) -> None:
        sync = self.workspace_sync
        kernel = await self.kernel(kernel_id)
        try:
            async with kernel.lock:
                chunks, result = await sync.sync_then_read(kernel_id, path, kernel.runner)
        except FileNotFound:
            raise web.HTTPError(404, f"The kernel has no file {path!r}") from None
        except StoreError as e:
            raise self.store_failed(e) from e
        error = self.log_sync(kernel_id, result)
        self.set_header("Content-Type", content_type(path))
        name = path.rsplit("/", 1)[-1]
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
        if error:
            self.set_header("X-KCR-Sync-Error", error.replace("\n", " ")[:500])
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()  # waits for the socket: back-pressure, bounded memory
        except StoreError as e:
            # Headers are out: all we can do is cut the response short.
            self.log.error("kernel %s: download of %s failed midway: %s", kernel_id, path, e)
            self.request.connection.close()
            return
        self.finish()

    @web.authenticated
    @authorized
    async def delete(self, kernel_id: str, path: str) -> None:
        sync = self.workspace_sync
        kernel = await self.kernel(kernel_id)
        try:
            async with kernel.lock:
                removed = await sync.delete_files(kernel_id, path, kernel.runner)
        except RunnerError as e:
            raise web.HTTPError(400, f"The kernel's workspace refused {path!r}: {e}") from e
        except StoreError as e:
            raise self.store_failed(e) from e
        if not removed:
            raise web.HTTPError(404, f"The kernel has no file {path!r}")
        self.set_status(204)
        self.finish()


def files_handlers() -> list[tuple]:
    """Route tuples for the files API (without ``base_url``)."""
    return [
        (rf"/api/kernels/{_KERNEL_ID}/files/?", FilesListHandler),
        (rf"/api/kernels/{_KERNEL_ID}/files/(?P<path>.+)", FileHandler),
    ]

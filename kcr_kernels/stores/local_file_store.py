"""File store in a local folder (the embedded default): ``file:///abs/path``.

Layout, one folder per kernel::

    {root}/{kernel_id}/files/{path}   the file itself
    {root}/{kernel_id}/meta/{path}    JSON sidecar: {"sha256", "size", "mtime_ns"}
    {root}/{kernel_id}/tmp/           uploads in progress (renamed into files/ when complete)

The sidecar lets ``list`` report sha256 without reading files; if a file was
changed behind the store's back (size or mtime differ from the sidecar) its
hash is recomputed and the sidecar rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import unquote, urlsplit

from .errors import FileNotFound, FileTooLarge, InvalidPath, StoreConfigError, StoreError
from .file_store import FileEntry, FileStore
from .keys import validate_kernel_id, validate_path


def local_root(url: str) -> str:
    """Return the absolute folder of a ``file:///abs/path`` URL."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise StoreConfigError(
            url, "open_file_store", "expected file:///absolute/path (three slashes)"
        )
    return os.path.normpath(path)


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _open_regular(path: str):
    """Open a regular file for reading, never through a symlink (raises FileNotFoundError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(path)
    return os.fdopen(fd, "rb", buffering=0)


def _atomic_write_text(path: str, text: str, tmp_dir: str) -> None:
    tmp = os.path.join(tmp_dir, f"meta-{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class LocalFileStore(FileStore):
    """:class:`FileStore` in a local folder; blocking file I/O runs in worker threads."""

    def __init__(self, url: str):
        self.url = url
        self.root = local_root(url)

    # -- layout ---------------------------------------------------------
    def _base(self, kernel_id: str, operation: str) -> str:
        validate_kernel_id(kernel_id, url=self.url, operation=operation)
        return os.path.join(self.root, kernel_id)

    def _paths(self, kernel_id: str, path: str, operation: str) -> tuple[str, str, str]:
        base = self._base(kernel_id, operation)
        validate_path(path, url=self.url, operation=operation)
        return base, os.path.join(base, "files", path), os.path.join(base, "meta", path)

    def _error(self, operation: str, e: OSError) -> StoreError:
        return StoreError(self.url, operation, f"{type(e).__name__}: {e}")

    # -- list -----------------------------------------------------------
    def _list_sync(self, base: str) -> list[FileEntry]:
        files_dir = os.path.join(base, "files")
        entries: list[FileEntry] = []
        for dirpath, _dirs, names in os.walk(files_dir):  # os.walk never follows symlinks
            for name in names:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if not os.path.isfile(full) or os.path.islink(full):
                    continue
                rel = os.path.relpath(full, files_dir).replace(os.sep, "/")
                entries.append(self._entry(base, rel, full, st))
        entries.sort(key=lambda e: e.path)
        return entries

    def _entry(self, base: str, rel: str, full: str, st: os.stat_result) -> FileEntry:
        meta_path = os.path.join(base, "meta", rel)
        meta = None
        with contextlib.suppress(OSError, ValueError):
            with open(meta_path) as f:
                meta = json.load(f)
        if not (
            isinstance(meta, dict)
            and meta.get("size") == st.st_size
            and meta.get("mtime_ns") == st.st_mtime_ns
            and isinstance(meta.get("sha256"), str)
        ):
            # changed behind our back (or sidecar lost): rehash and repair the sidecar
            meta = {"sha256": _hash_file(full), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(meta_path), exist_ok=True)
                os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
                _atomic_write_text(meta_path, json.dumps(meta), os.path.join(base, "tmp"))
        return FileEntry(rel, st.st_size, st.st_mtime_ns / 1e9, meta["sha256"])

    async def list(self, kernel_id: str) -> list[FileEntry]:
        op = f"list({kernel_id!r})"
        base = self._base(kernel_id, op)
        try:
            return await asyncio.to_thread(self._list_sync, base)
        except OSError as e:
            raise self._error(op, e) from e

    # -- read -----------------------------------------------------------
    async def read(
        self, kernel_id: str, path: str, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        op = f"read({kernel_id!r}, {path!r})"
        _base, target, _meta = self._paths(kernel_id, path, op)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        try:
            f = await asyncio.to_thread(_open_regular, target)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise FileNotFound(self.url, op, "no such file") from None
        except OSError as e:
            raise self._error(op, e) from e
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        except OSError as e:
            raise self._error(op, e) from e
        finally:
            f.close()

    # -- write ----------------------------------------------------------
    async def write(
        self,
        kernel_id: str,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int | None = None,
        mtime: float | None = None,
    ) -> FileEntry:
        op = f"write({kernel_id!r}, {path!r})"
        base, target, meta_path = self._paths(kernel_id, path, op)
        tmp_dir = os.path.join(base, "tmp")
        tmp = os.path.join(tmp_dir, f"upload-{uuid.uuid4().hex}")
        try:
            await asyncio.to_thread(os.makedirs, tmp_dir, exist_ok=True)
            f = await asyncio.to_thread(open, tmp, "wb")
        except OSError as e:
            raise self._error(op, e) from e
        h = hashlib.sha256()
        size = 0
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise FileTooLarge(self.url, op, size, max_bytes)
                    h.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(self._flush, f)
            finally:
                f.close()
            digest = h.hexdigest()
            mtime_ns = time.time_ns() if mtime is None else round(mtime * 1e9)
            st = await asyncio.to_thread(
                self._commit, op, base, tmp, target, meta_path, digest, size, mtime_ns
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return FileEntry(path, size, st.st_mtime_ns / 1e9, digest)

    @staticmethod
    def _flush(f) -> None:
        f.flush()
        os.fsync(f.fileno())

    def _commit(
        self,
        op: str,
        base: str,
        tmp: str,
        target: str,
        meta_path: str,
        digest: str,
        size: int,
        mtime_ns: int,
    ) -> os.stat_result:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        try:
            if os.path.isdir(target):
                raise IsADirectoryError(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(tmp, target)
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            raise InvalidPath(
                self.url, op, "a file and a folder cannot share a name in the workspace"
            ) from None
        except OSError as e:
            raise self._error(op, e) from e
        st = os.stat(target)
        meta = {"sha256": digest, "size": size, "mtime_ns": st.st_mtime_ns}
        try:
            os.makedirs(os.path.dirname(meta_path), exist_ok=True)
            _atomic_write_text(meta_path, json.dumps(meta), os.path.dirname(tmp))
        except OSError:
            pass  # list() recomputes a missing sidecar; the file itself is safely stored
        return st

    # -- delete ---------------------------------------------------------
    def _delete_sync(self, base: str, path: str) -> None:
        for tree in ("files", "meta"):
            full = os.path.join(base, tree, path)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(full)
            # prune folders left empty, so the name can later become a file
            parent = os.path.dirname(full)
            top = os.path.join(base, tree)
            while parent != top and parent.startswith(top + os.sep):
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)

    async def delete(self, kernel_id: str, path: str) -> None:
        op = f"delete({kernel_id!r}, {path!r})"
        base, _t, _m = self._paths(kernel_id, path, op)
        try:
            await asyncio.to_thread(self._delete_sync, base, path)
        except OSError as e:
            raise self._error(op, e) from e

    async def delete_all(self, kernel_id: str) -> None:
        op = f"delete_all({kernel_id!r})"
        base = self._base(kernel_id, op)
        try:
            await asyncio.to_thread(shutil.rmtree, base, ignore_errors=False)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(op, e) from e

    async def close(self) -> None:
        pass

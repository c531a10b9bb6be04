"""The file store interface: each kernel's working files, outside any pod.

Open one with :func:`kcr_kernels.stores.open_file_store`; the URL scheme picks
the implementation (``s3://bucket/prefix`` for production, ``file:///abs/path``
as the embedded default).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FileEntry:
    """One stored file.

    ``path`` is the POSIX path relative to the kernel's workspace; ``size`` in
    bytes; ``mtime`` in seconds since the epoch (the ``mtime`` given to
    ``write``, else the time it was written); ``sha256`` the hex digest of the
    content, recorded at write time. ``sha256`` is ``None`` only for an S3
    object written by another tool (no ``sha256`` metadata).
    """

    path: str
    size: int
    mtime: float
    sha256: str | None

    def to_dict(self) -> dict:
        return asdict(self)


class FileStore(abc.ABC):
    """Per-kernel file storage, streamed in both directions.

    Contract (identical for every implementation, checked by
    ``tests/stores/test_file_store_contract.py``):

    * Every method takes a ``kernel_id`` (checked by ``validate_kernel_id``,
      raising :class:`InvalidKernelId`) and, where relevant, a ``path`` checked
      by :func:`validate_path` (:class:`InvalidPath`). A kernel's files live
      under its own folder / key prefix and no valid kernel id or path reaches
      another kernel's.
    * ``list(kernel_id)`` returns every file as a :class:`FileEntry`, sorted by
      path, without reading file contents. Unknown kernel: ``[]``.
    * ``read(kernel_id, path, chunk_size)`` is an async iterator of ``bytes``
      chunks of at most ``chunk_size`` bytes; the file is never held in memory
      whole. A missing file raises :class:`FileNotFound` on the first
      iteration (``async for`` raises before yielding anything).
    * ``write(kernel_id, path, chunks, max_bytes=None, mtime=None)`` consumes
      ``chunks`` (any async iterable of bytes), hashing on the way, and returns
      the new :class:`FileEntry`. The file appears atomically: readers see the
      old content or the new, never a partial file. If more than ``max_bytes``
      arrive it raises :class:`FileTooLarge` and keeps nothing of the new
      content (a previous file at that path is left as it was); the same holds
      if ``chunks`` raises or the task is cancelled. ``mtime`` (epoch seconds)
      records the workspace file's own mtime; default: now.
    * ``delete(kernel_id, path)`` removes one file (missing: not an error).
      ``delete_all(kernel_id)`` removes every file of the kernel.
      ``usage(kernel_id)`` is the total size in bytes.
    * A file and a folder cannot share a name: writing ``a/b`` when ``a`` is a
      file (or ``a`` when ``a/b`` exists) raises :class:`InvalidPath`.
    * ``ping()`` checks, before first use, that the store answers and is what its URL
      says (:class:`StoreUnavailable` / :class:`StoreConfigError`).
    * Failures raise :class:`StoreError` naming the store URL and operation;
      an unreachable service raises :class:`StoreUnavailable` within the
      configured timeouts.

    All methods are coroutines (``read`` an async generator) that never block
    the event loop. ``close()`` releases resources; ``async with`` works too.
    """

    #: the URL this store was opened with
    url: str

    @abc.abstractmethod
    async def list(self, kernel_id: str) -> list[FileEntry]: ...

    @abc.abstractmethod
    def read(
        self, kernel_id: str, path: str, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def write(
        self,
        kernel_id: str,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int | None = None,
        mtime: float | None = None,
    ) -> FileEntry: ...

    @abc.abstractmethod
    async def delete(self, kernel_id: str, path: str) -> None: ...

    @abc.abstractmethod
    async def delete_all(self, kernel_id: str) -> None: ...

    async def ping(self) -> None:
        """Check the store is there and is what its URL says, before it is used.

        Raises :class:`StoreUnavailable` when it cannot be reached (now: it may come back)
        and :class:`StoreConfigError` when it answers but cannot work (not an S3 API, no
        such bucket, credentials refused). The default does nothing.
        """
        return None

    async def usage(self, kernel_id: str) -> int:
        """Total bytes stored for ``kernel_id``."""
        return sum(e.size for e in await self.list(kernel_id))

    async def read_bytes(self, kernel_id: str, path: str) -> bytes:
        """Convenience for small files: the whole content (do not use for large files)."""
        return b"".join([c async for c in self.read(kernel_id, path)])

    async def write_bytes(
        self, kernel_id: str, path: str, data: bytes, *, mtime: float | None = None
    ) -> FileEntry:
        """Convenience for small files: write ``data`` in one piece."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write(kernel_id, path, one(), mtime=mtime)

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> FileStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

"""Workspace files: list, read, write and delete by relative path (blocking; run them on
the :class:`~kcr_runner.file_identity.FileOps` threads).

Every path is resolved by :mod:`kcr_runner.safe_paths` relative to the workspace's directory
fd, never by name: absolute paths and ``..`` are refused (``PathRefused``, HTTP 400), a
symlink anywhere in the path is refused (``PathEscapes``, HTTP 403) and never followed.
Symlinks that kernel code creates stay in the workspace and are listed as
``{"type": "symlink"}`` (with their target text, never hashed or followed); deleting one
removes the link itself.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, BinaryIO

from . import safe_paths
from .safe_paths import PathEscapes, PathRefused, Upload

__all__ = ["PathEscapes", "PathRefused", "Upload", "Workspace"]


class Workspace:
    """A directory whose files can be listed, read, written and deleted by relative path."""

    def __init__(self, root: str):
        self._root = safe_paths.Root(root)
        self.root = self._root.path
        # path -> ((size, mtime_ns, inode), sha256): a listing re-hashes only changed files.
        self._digests: dict[str, tuple[tuple[int, int, int], str]] = {}

    def list(self) -> list[dict[str, Any]]:
        """Every regular file and symlink under the root, sorted by path.

        Files: ``{"path", "type": "file", "size", "mtime", "sha256"}``; symlinks:
        ``{"path", "type": "symlink", "size", "mtime", "target"}`` (not followed).
        """
        entries = []
        seen: dict[str, tuple[tuple[int, int, int], str]] = {}
        for entry in safe_paths.walk(self._root):
            info = entry.info
            if entry.kind == "symlink":
                try:
                    target = os.readlink(entry.name, dir_fd=entry.dir_fd)
                except OSError:
                    continue
                entries.append(
                    {
                        "path": entry.path,
                        "type": "symlink",
                        "size": info.st_size,
                        "mtime": info.st_mtime,
                        "target": target,
                    }
                )
                continue
            key = (info.st_size, info.st_mtime_ns, info.st_ino)
            cached = self._digests.get(entry.path)
            if cached is not None and cached[0] == key:
                digest = cached[1]
            else:
                fd = safe_paths.open_entry(entry)
                if fd is None:
                    continue
                with os.fdopen(fd, "rb") as handle:
                    digest = _sha256(handle)
            seen[entry.path] = (key, digest)
            entries.append(
                {
                    "path": entry.path,
                    "type": "file",
                    "size": info.st_size,
                    "mtime": info.st_mtime,
                    "sha256": digest,
                }
            )
        self._digests = seen
        return entries

    def fingerprint(self) -> str:
        """A digest of every regular file's and symlink's path, size, mtime and inode: it
        changes whenever one is created, changed or deleted (contents are not read)."""
        digest = hashlib.blake2b(digest_size=16)
        for entry in safe_paths.walk(self._root):
            info = entry.info
            digest.update(
                f"{entry.kind}\0{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\0"
                f"{info.st_ino}\n".encode()
            )
        return digest.hexdigest()

    def open_read(self, path: str) -> BinaryIO:
        """A binary file object for the regular file ``path`` (never through a symlink)."""
        return os.fdopen(self._root.open_read(path), "rb")

    def begin_write(self, path: str) -> Upload:
        """Start replacing ``path``: an ``O_EXCL`` temp file in its verified parent directory.

        The caller writes the body into ``upload.file``, then calls :meth:`commit_write`
        (an atomic rename onto the name) or :meth:`abort_write`.
        """
        return self._root.begin_write(path)

    @staticmethod
    def commit_write(upload: Upload) -> None:
        upload.commit()

    @staticmethod
    def abort_write(upload: Upload) -> None:
        upload.abort()

    def read(self, path: str) -> bytes:
        with self.open_read(path) as handle:
            return handle.read()

    def write(self, path: str, data: bytes) -> None:
        """Atomically replace (or create) ``path``, creating parent directories."""
        self._root.write(path, data)

    def delete(self, path: str) -> None:
        """Remove a file, a symlink (the link, not its target) or a directory tree."""
        self._root.delete(path)

    def close(self) -> None:
        self._root.close()


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()

"""Workspace files, confined to the workspace directory (blocking; call via a thread).

Paths are relative, ``/``-separated. Absolute paths and ``..`` components are refused
(``PathRefused``, HTTP 400); a path whose real location is outside the workspace because of a
symlink is refused (``PathEscapes``, HTTP 403). The final component is opened with
``O_NOFOLLOW`` so a symlink swapped in after the check is not followed either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from typing import Any


class PathRefused(ValueError):
    """The path is absolute, contains ``..`` or is otherwise malformed."""


class PathEscapes(PermissionError):
    """The path resolves (through a symlink) outside the workspace."""


class Workspace:
    """A directory whose files can be listed, read, written and deleted by relative path."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        # path -> ((size, mtime_ns, inode), sha256): a listing re-hashes only changed files.
        self._digests: dict[str, tuple[tuple[int, int, int], str]] = {}

    def resolve(self, path: str) -> str:
        """The absolute path for ``path``, after the confinement checks."""
        if not path or "\x00" in path:
            raise PathRefused("a non-empty file path is required")
        if path.startswith("/") or path.startswith("\\") or os.path.isabs(path):
            raise PathRefused(f"absolute paths are not allowed: {path!r}")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise PathRefused(f"'..' is not allowed in file paths: {path!r}")
        if not parts:
            raise PathRefused("a file path inside the workspace is required")
        full = os.path.join(self.root, *parts)
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise PathEscapes(f"{path!r} leads outside the workspace")
        return full

    def list(self) -> list[dict[str, Any]]:
        """Every regular file under the root (symlinks are not followed), sorted by path."""
        entries = []
        seen: dict[str, tuple[tuple[int, int, int], str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    info = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                key = (info.st_size, info.st_mtime_ns, info.st_ino)
                cached = self._digests.get(rel)
                if cached is not None and cached[0] == key:
                    digest = cached[1]
                else:
                    try:
                        digest = _sha256(full)
                    except OSError:
                        continue
                seen[rel] = (key, digest)
                entries.append(
                    {"path": rel, "size": info.st_size, "mtime": info.st_mtime, "sha256": digest}
                )
        self._digests = seen
        entries.sort(key=lambda e: e["path"])
        return entries

    def fingerprint(self) -> str:
        """A digest of every regular file's path, size, mtime and inode: it changes whenever
        a file is created, changed or deleted (contents are not read)."""
        digest = hashlib.blake2b(digest_size=16)
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    info = os.lstat(full)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    digest.update(
                        f"{full}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\n".encode()
                    )
        return digest.hexdigest()

    def open_read(self, path: str):
        """A binary file object for ``path`` (a regular file, never through a symlink)."""
        full = self.resolve(path)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        handle = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            handle.close()
            raise IsADirectoryError(f"{path!r} is not a regular file")
        return handle

    def begin_write(self, path: str) -> tuple[str, str, Any]:
        """Start replacing ``path``: returns (final path, temp path, open temp file).

        The caller writes the body into the temp file, then calls :meth:`commit_write`
        (an atomic rename) or :meth:`abort_write`.
        """
        full = self.resolve(path)
        parent = os.path.dirname(full)
        os.makedirs(parent, exist_ok=True)
        self.resolve(path)  # parents created just now cannot escape, but re-check anyway
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".kcr-upload-")
        return full, tmp, os.fdopen(fd, "wb")

    @staticmethod
    def commit_write(full: str, tmp: str, handle) -> None:
        handle.close()
        if os.path.islink(full):
            os.unlink(full)  # replace an in-workspace link by a file, never write through it
        os.replace(tmp, full)

    @staticmethod
    def abort_write(tmp: str, handle) -> None:
        handle.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def read(self, path: str) -> bytes:
        full = self.resolve(path)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise IsADirectoryError(f"{path!r} is not a regular file")
            return handle.read()

    def write(self, path: str, data: bytes) -> None:
        """Atomically replace (or create) ``path``, creating parent directories."""
        full = self.resolve(path)
        parent = os.path.dirname(full)
        os.makedirs(parent, exist_ok=True)
        self.resolve(path)  # parents created just now cannot escape, but re-check anyway
        if os.path.islink(full):
            os.unlink(full)  # replace an in-workspace link by a file, never write through it
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".kcr-upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def delete(self, path: str) -> None:
        full = self.resolve(path)
        if os.path.islink(full) or not os.path.isdir(full):
            os.unlink(full)
        else:
            shutil.rmtree(full)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Race-free path resolution inside a directory that untrusted code controls.

User code owns every name in the workspace and can swap any of them, at any time, between a
file, a directory and a symlink to a host path. The runner (outside the sandbox) therefore
never resolves a workspace path by name. The contract of this module:

* Every operation starts from :class:`Root`, a directory fd opened once, and resolves the
  relative path component by component *through file descriptors*: ``openat2`` with
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`` where the kernel has it
  (Linux 5.6+), otherwise one ``openat(O_NOFOLLOW | O_DIRECTORY)`` per component. A symlink
  anywhere in the path -- middle or final component, dangling or not, pointing inside or
  outside -- fails with :class:`PathEscapes`; it is never followed.
* The final component is then acted on relative to the verified parent directory fd, never by
  a name that is looked up again: files are opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO
  cannot block the runner) and checked with ``fstat``; writes to a name that is a symlink are
  refused, and otherwise go to a fresh ``O_EXCL`` temp file in the parent fd, then
  ``renameat`` onto the name (a symlink swapped in meanwhile is replaced, never written
  through); deletes are ``unlinkat`` on the parent fd (deleting a symlink removes the
  link); directories are removed by an fd walk that never follows links
  (:func:`shutil.rmtree` with ``dir_fd``); directories are created with ``mkdirat``.
* :func:`walk` lists a tree through fds (``O_NOFOLLOW | O_DIRECTORY`` per directory) and
  reports symlinks as symlinks without following them.

Errors: :class:`PathRefused` (malformed path: absolute, ``..``, NUL, empty),
:class:`PathEscapes` (a symlink is in the way), or the plain :class:`OSError` of the failing
call (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``...). Blocking:
call from a worker thread. Linux only (``O_NOFOLLOW`` and ``dir_fd`` are POSIX; ``openat2``
is optional). Tested by ``tests/runner/test_safe_paths.py`` and, against a real sandboxed
kernel that swaps links in a loop, ``tests/sandbox/test_symlink_race.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

#: Prefix of the temporary files an upload is written into (the sync ignores them).
TEMP_PREFIX = ".kcr-upload-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())


class PathRefused(ValueError):
    """The path is absolute, contains ``..`` or NUL, or is empty."""


class PathEscapes(PermissionError):
    """A symlink is in the path: the runner never follows one."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None if _SYS_OPENAT2 is not None else False


def split(path: str) -> list[str]:
    """The components of a relative ``/``-separated path; :class:`PathRefused` if malformed."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathRefused("a non-empty file path is required")
    if path.startswith(("/", "\\")) or os.path.isabs(path):
        raise PathRefused(f"absolute paths are not allowed: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"'..' is not allowed in file paths: {path!r}")
    if not parts:
        raise PathRefused("a file path inside the workspace is required")
    return parts


def _openat2(dir_fd: int, rel: str, flags: int) -> int | None:
    """``openat2`` beneath ``dir_fd`` with no symlinks at all; ``None`` if unavailable."""
    global _openat2_works
    if _openat2_works is False:
        return None
    how = _OpenHow(
        flags | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
    )
    fd = _libc.syscall(
        _SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd >= 0:
        _openat2_works = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
        _openat2_works = False  # old kernel, or a seccomp filter: use the per-component walk
        return None
    if err in (errno.EAGAIN, errno.ENOTDIR):
        # EAGAIN: a concurrent rename made the kernel give up; ENOTDIR: a file or a symlink
        # in the way, which the walk tells apart for the error message. Walk instead.
        return None
    raise _error(err, rel)


def _error(err: int, rel: str) -> OSError:
    if err == errno.ELOOP:
        return PathEscapes(f"{rel!r} goes through a symlink; symlinks are never followed")
    if err == errno.EXDEV:
        return PathEscapes(f"{rel!r} leads outside the workspace")
    return OSError(err, os.strerror(err), rel)


def _open_beneath(dir_fd: int, parts: list[str], flags: int) -> int:
    """Open ``parts`` beneath ``dir_fd``, never following a symlink (a new fd)."""
    rel = "/".join(parts)
    fd = _openat2(dir_fd, rel, flags)
    if fd is not None:
        return fd
    current = dir_fd
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(name, (flags | os.O_NOFOLLOW) if last else _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                err = exc.errno
                if err == errno.ENOTDIR and _is_symlink(current, name):
                    err = errno.ELOOP  # O_DIRECTORY|O_NOFOLLOW met a symlink (for the message)
                raise _error(err, rel) from None
            if current != dir_fd:
                os.close(current)
            current = nxt
        return current
    except BaseException:
        if current != dir_fd:
            os.close(current)
        raise


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class Root:
    """A directory fd that every operation is relative to (opened once, by its trusted path).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str):
        self.path = os.path.realpath(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolution --------------------------------------------------------------------

    def open_dir(self, parts: list[str], *, create: bool = False) -> int:
        """An fd of directory ``parts`` (``[]``: the root itself), created if ``create``."""
        if not parts:
            return os.dup(self.fd)
        if not create:
            return _open_beneath(self.fd, parts, _DIR_FLAGS)
        current = os.dup(self.fd)
        try:
            for name in parts:
                try:
                    os.mkdir(name, 0o755, dir_fd=current)
                except FileExistsError:
                    pass
                nxt = _open_beneath(current, [name], _DIR_FLAGS)
                os.close(current)
                current = nxt
            return current
        except BaseException:
            os.close(current)
            raise

    def parent(self, path: str, *, create: bool = False) -> tuple[int, str]:
        """``(fd of the verified parent directory, final name)``; the caller closes the fd."""
        parts = split(path)
        return self.open_dir(parts[:-1], create=create), parts[-1]

    # -- files -------------------------------------------------------------------------

    def open_read(self, path: str) -> int:
        """An fd for reading the regular file ``path`` (never a symlink, FIFO or device)."""
        fd = _open_beneath(self.fd, split(path), _READ_FLAGS)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, f"{path!r} is a directory")
            if not stat.S_ISREG(mode):
                raise PathEscapes(f"{path!r} is not a regular file")
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def begin_write(self, path: str, mode: int = 0o644) -> Upload:
        """Create a fresh ``O_EXCL`` temp file beside ``path`` (parents created as needed)."""
        parent, name = self.parent(path, create=True)
        try:
            if _is_symlink(parent, name):
                # Policy, not the safety net: a link swapped in after this check is
                # replaced by commit()'s rename, never written through.
                raise PathEscapes(f"{path!r} is a symlink; symlinks are never followed")
            for _ in range(10):
                tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
                try:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(tmp, flags, mode, dir_fd=parent)
                except FileExistsError:
                    continue
                return Upload(parent, name, tmp, os.fdopen(fd, "wb"))
            raise FileExistsError(errno.EEXIST, "no free temporary name", path)
        except BaseException:
            os.close(parent)
            raise

    def write(self, path: str, data: bytes) -> None:
        """Atomically create or replace ``path`` with ``data``."""
        upload = self.begin_write(path)
        try:
            upload.file.write(data)
        except BaseException:
            upload.abort()
            raise
        upload.commit()

    def mkdir(self, path: str) -> None:
        """Create directory ``path`` (its parents must exist)."""
        parent, name = self.parent(path)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        finally:
            os.close(parent)

    def delete(self, path: str) -> None:
        """Remove ``path``: a file or a symlink (the link itself), or a directory tree."""
        parent, name = self.parent(path)
        try:
            remove_entry(parent, name)
        finally:
            os.close(parent)


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``: unlinked when it is not a directory, else the tree."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    except PermissionError as exc:  # some systems answer EPERM for unlink(directory)
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise exc
    # shutil.rmtree with dir_fd walks by fd and refuses to follow symlinks.
    shutil.rmtree(name, dir_fd=dir_fd)


@dataclass
class Upload:
    """A temp file in a verified parent directory fd; :meth:`commit` renames it into place."""

    parent: int
    name: str
    tmp: str
    file: object

    def commit(self) -> None:
        """Close the temp file and rename it onto ``name`` (a symlink there is replaced)."""
        try:
            self.file.close()
            os.rename(self.tmp, self.name, src_dir_fd=self.parent, dst_dir_fd=self.parent)
        except IsADirectoryError:
            self._drop_tmp()
            raise IsADirectoryError(errno.EISDIR, f"{self.name!r} is a directory") from None
        except BaseException:
            self._drop_tmp()
            raise
        finally:
            self._close_parent()

    def abort(self) -> None:
        """Close and remove the temp file (idempotent)."""
        try:
            self.file.close()
            self._drop_tmp()
        finally:
            self._close_parent()

    def _drop_tmp(self) -> None:
        if self.parent >= 0:
            try:
                os.unlink(self.tmp, dir_fd=self.parent)
            except FileNotFoundError:
                pass

    def _close_parent(self) -> None:
        if self.parent >= 0:
            os.close(self.parent)
            self.parent = -1


@dataclass(frozen=True)
class Entry:
    """One entry of :func:`walk`: ``kind`` is ``"file"`` or ``"symlink"``."""

    path: str
    kind: str
    info: os.stat_result
    dir_fd: int  #: valid only while the walk is at this entry
    name: str


def walk(root: Root) -> Iterator[Entry]:
    """Every regular file and symlink under ``root``, directories entered by fd, in path order.

    Directories are opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to their parent's fd,
    so a directory swapped for a symlink while the walk runs is skipped, never entered.
    Entries that vanish meanwhile are skipped. FIFOs, sockets and devices are not reported.
    """
    yield from _walk_dir(os.dup(root.fd), "")


def _walk_dir(fd: int, prefix: str) -> Iterator[Entry]:
    try:
        try:
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it)
        except OSError:
            return
        for name in names:
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            rel = prefix + name
            if stat.S_ISDIR(info.st_mode):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                yield from _walk_dir(child, rel + "/")
            elif stat.S_ISLNK(info.st_mode):
                yield Entry(rel, "symlink", info, fd, name)
            elif stat.S_ISREG(info.st_mode):
                yield Entry(rel, "file", info, fd, name)
    finally:
        os.close(fd)


def open_entry(entry: Entry) -> int | None:
    """An fd for reading a regular file found by :func:`walk` (``None`` if it changed)."""
    try:
        fd = os.open(entry.name, _READ_FLAGS, dir_fd=entry.dir_fd)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_ino != entry.info.st_ino:
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd

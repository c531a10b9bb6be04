"""One gateway per data folder: an exclusive ``flock`` on ``<data_dir>/gateway.lock``.

The embedded default keeps a gateway's pods, SQLite registry and files in its data
folder, and a gateway clears the pods it finds there at start-up as left behind by a
killed predecessor. That is only safe when nobody else uses the folder, so a gateway
holds this lock for its whole life:

* :meth:`DataDirLock.acquire` creates the folder if needed, opens the lock file and
  takes ``fcntl.flock(LOCK_EX | LOCK_NB)``; then writes its pid into the file (for the
  message a second gateway prints). Raises :class:`DataDirBusy` (naming the folder and
  the running gateway's pid) when another live process holds it, and
  :class:`DataDirUnusable` when the folder cannot be created or written.
* A lock file left by a dead gateway does not block: the kernel drops an ``flock``
  when its holder dies, so holding the lock *proves* the previous owner is gone.
* :meth:`release` unlocks and closes (the file stays; its content is stale then).

The lock's file descriptor is close-on-exec, so runner processes never inherit it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "gateway.lock"


class DataDirBusy(RuntimeError):
    """Another live gateway (``pid``, ``None`` if unknown) holds the data folder's lock."""

    def __init__(self, folder: Path, pid: int | None):
        who = f"pid {pid}" if pid else "a process whose pid the lock file does not say"
        super().__init__(
            f"another kcr-gateway ({who}) is using the data folder {folder}: "
            "stop it first, or give this one its own --data-dir"
        )
        self.folder = folder
        self.pid = pid


class DataDirUnusable(RuntimeError):
    """The data folder cannot be created, or its lock file cannot be written."""

    def __init__(self, folder: Path, error: OSError):
        super().__init__(
            f"the data folder {folder} is not usable ({error.strerror or error}): "
            "make it writable for this user or pick another with --data-dir"
        )
        self.folder = folder


class DataDirLock:
    """The exclusive lock of one data folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy` / :class:`DataDirUnusable`."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DataDirUnusable(self.folder, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirBusy(self.folder, holder) from None
            raise DataDirUnusable(self.folder, e) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise DataDirUnusable(self.folder, e) from None
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the only descriptor drops the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None

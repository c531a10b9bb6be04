"""The notebook's folder on the Jupyter Server's disk: scanned, read and written safely.

:class:`LocalFolder` is the only code of the folder sync that touches the server's disk.
Every path it takes is relative to the folder and checked with the store's rules
(``kcr_kernels.stores.validate_path``); every access opens the folder and then each parent
with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous one, so a symlink (even one
swapped in during a sync) never leads out of the folder. Files are written to a temporary
name in their folder and renamed into place (a reader never sees half a file), read and
written in chunks (never a whole file in memory). The methods block: callers run them in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from kcr_kernels.stores import InvalidPath, validate_path

#: Prefix of the temporary files this module writes (hidden: never synced).
TEMP_PREFIX = ".kcr-sync-"
CHUNK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Skipped:
    """A file left out of the sync: ``path`` (printable), ``reason`` (a short phrase)."""

    path: str
    reason: str


@dataclass
class Scan:
    """What :meth:`LocalFolder.scan` found.

    ``files``: path → ``(size, mtime_ns, inode)`` of every file that takes part;
    ``skipped``: files left out and why; ``refused``: a reason the whole folder is left out
    (more than ``max_files`` files), else ``None``.
    """

    files: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    refused: str | None = None


@dataclass
class Rules:
    """Which files take part in a sync, on both sides.

    Hidden names (a segment starting with ``.``: ``.git``, ``.ipynb_checkpoints``, temp
    files) never do; nor names matching ``skip_patterns`` (shell patterns matched against
    each segment and against the whole relative path). ``max_file_bytes`` per file,
    ``max_bytes`` for all files together and ``max_files`` (over it the folder is refused);
    ``0`` means no limit.
    """

    skip_patterns: list[str] = field(default_factory=list)
    max_file_bytes: int = 0
    max_bytes: int = 0
    max_files: int = 0

    def __post_init__(self) -> None:
        regex = "|".join(fnmatch.translate(p) for p in self.skip_patterns) or r"(?!)"
        self._match = re.compile(regex).match

    def excluded(self, path: str) -> bool:
        """True when ``path`` never takes part (hidden or a skip pattern)."""
        if self._match(path):
            return True
        return any(self.excluded_name(p) for p in path.split("/"))

    def excluded_name(self, name: str) -> bool:
        """True when one path segment is hidden or matches a skip pattern."""
        return name.startswith(".") or self._match(name) is not None

    def too_large(self, size: int) -> str | None:
        if self.max_file_bytes and size > self.max_file_bytes:
            return f"it is {human(size)}, over the per-file limit of {human(self.max_file_bytes)}"
        return None


def human(n: int) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def printable(name: str) -> str:
    """A name as text even when it is not valid UTF-8 (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class LocalFolder:
    """One folder ``root`` on the server's disk; see the module docstring for the rules."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self._valid: set[str] = set()  # paths validate_path accepted (a pure function)

    # -- scanning ------------------------------------------------------------------------

    def scan(self, rules: Rules) -> Scan:
        """Every regular file under the folder that takes part (see :class:`Rules`).

        Symlinks are never followed (reported when they lead out of the folder), names that
        are not UTF-8 or that the file store would refuse are reported, files over the size
        limits are reported; once more than ``rules.max_files`` files are found the scan
        stops and the folder is refused."""
        result = Scan()
        total = 0
        try:
            top = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            result.refused = f"the folder cannot be read: {e.strerror}"
            return result
        stack: list[tuple[int, str]] = [(top, "")]
        try:
            while stack:
                fd, prefix = stack.pop()
                try:
                    refused = self._scan_dir(fd, prefix, rules, result, stack, total)
                finally:
                    os.close(fd)
                if refused is None:
                    return result
                total = refused
        finally:
            for fd, _ in stack:
                os.close(fd)
        return result

    def _scan_dir(
        self, fd: int, prefix: str, rules: Rules, result: Scan, stack: list, total: int
    ) -> int | None:
        """Scan one folder (open as ``fd``); returns the new byte total, ``None`` once the
        folder is refused."""
        try:
            entries = sorted(os.scandir(fd), key=lambda e: e.name)
        except OSError:
            return total  # vanished or unreadable: nothing to sync there
        for entry in entries:
            rel = prefix + entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                result.skipped.append(Skipped(printable(rel), "its name is not UTF-8"))
                continue
            # Parents were checked on the way down: only this name and the whole path.
            if rules.excluded_name(entry.name) or (prefix and rules._match(rel)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since the listing
            if stat.S_ISLNK(st.st_mode):
                where = self._link_target(rel)
                result.skipped.append(Skipped(rel, f"it is a symlink{where}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(OSError):
                    stack.append((os.open(entry.name, _DIR_FLAGS, dir_fd=fd), rel + "/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if rel not in self._valid:
                try:
                    validate_path(rel)
                except InvalidPath as e:
                    result.skipped.append(Skipped(rel, f"the kernel cannot hold it ({e.detail})"))
                    continue
                self._valid.add(rel)
            why = rules.too_large(st.st_size)
            if why:
                result.skipped.append(Skipped(rel, why))
                continue
            if rules.max_bytes and total + st.st_size > rules.max_bytes:
                result.skipped.append(
                    Skipped(
                        rel,
                        f"the folder's files are over the limit of {human(rules.max_bytes)} in all",
                    )
                )
                continue
            if rules.max_files and len(result.files) >= rules.max_files:
                result.refused = (
                    f"it has more than {rules.max_files} files (KCRFolderSync.max_files)"
                )
                result.files.clear()
                result.skipped.clear()
                return None
            total += st.st_size
            result.files[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return total

    def _link_target(self, rel: str) -> str:
        try:
            target = os.path.realpath(os.path.join(self.root, rel))
        except OSError:
            return ""
        if target != self.root and not target.startswith(self.root + os.sep):
            return " that points outside the folder"
        return ""

    # -- files ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _parent(self, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(fd of the folder holding rel, last name)``, walked without following links."""
        validate_path(rel)
        parts = rel.split("/")
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def stat(self, rel: str) -> tuple[int, int, int] | None:
        """``(size, mtime_ns, inode)`` of a regular file, ``None`` if there is none."""
        try:
            with self._parent(rel) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (OSError, InvalidPath):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def open_read(self, rel: str) -> tuple[int, tuple[int, int, int]]:
        """An fd open for reading (the caller closes it) and the file's signature."""
        with self._parent(rel) as (fd, name):
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        st = os.fstat(f)
        if not stat.S_ISREG(st.st_mode):
            os.close(f)
            raise IsADirectoryError(rel)
        return f, (st.st_size, st.st_mtime_ns, st.st_ino)

    def sha256(self, rel: str) -> str | None:
        """The file's sha256 (hex), ``None`` when it is gone."""
        try:
            f, _ = self.open_read(rel)
        except (OSError, InvalidPath):
            return None
        digest = hashlib.sha256()
        try:
            while chunk := os.read(f, CHUNK):
                digest.update(chunk)
        finally:
            os.close(f)
        return digest.hexdigest()

    def create_temp(self, rel: str) -> tuple[int, int, str]:
        """Start writing ``rel``: ``(dir fd, file fd, temp name)`` for :meth:`commit`."""
        with self._parent(rel, create=True) as (fd, _name):
            dir_fd = os.dup(fd)
        temp = TEMP_PREFIX + secrets.token_hex(6)
        try:
            f = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=dir_fd,
            )
        except OSError:
            os.close(dir_fd)
            raise
        return dir_fd, f, temp

    def commit(self, rel: str, dir_fd: int, f: int, temp: str) -> tuple[int, int, int]:
        """Rename the finished temp file onto ``rel``; returns its signature."""
        try:
            st = os.fstat(f)
            os.close(f)
            os.replace(temp, rel.rsplit("/", 1)[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    @staticmethod
    def abort(dir_fd: int, f: int, temp: str) -> None:
        """Drop a temp file that will not be committed."""
        with contextlib.suppress(OSError):
            os.close(f)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        with contextlib.suppress(OSError):
            os.close(dir_fd)

    def delete(self, rel: str, expected: tuple[int, int, int] | None = None) -> bool:
        """Remove the file ``rel`` (only if it still has the ``expected`` signature);
        True when it is gone."""
        try:
            with self._parent(rel) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    return False
                if expected is not None and (st.st_size, st.st_mtime_ns, st.st_ino) != expected:
                    return False
                os.unlink(name, dir_fd=fd)
                return True
        except FileNotFoundError:
            return True
        except (OSError, InvalidPath):
            return False

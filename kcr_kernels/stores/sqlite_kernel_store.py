"""Kernel store in one SQLite file (the embedded default): ``sqlite:///abs/path/kcr.db``.

Tables: ``kernels(kernel_id, record)``, ``states(kernel_id, blob, meta,
expires_at)``, ``host_leases(kernel_id, owner, expires_at, boot_id)``. The
database runs in WAL mode with a busy timeout, so several gateway processes on
one machine can share the file. States expire by wall-clock time
(``time.time()``, they outlive reboots); expired states are dropped lazily (on
read, and in bulk on every ``put_state``). Leases expire by the host's
monotonic clock within one boot (``time.monotonic()``, immune to clock jumps);
a lease from an earlier boot is expired.

The stdlib :mod:`sqlite3` module is used from a worker thread
(:func:`asyncio.to_thread`): it needs no extra dependency, and one connection
per store guarded by a lock is all an embedded gateway needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ._checks import check_blob, check_owner, check_settings, check_ttl, dump_json
from .errors import StoreConfigError, StoreError, StoreUnavailable
from .kernel_store import KernelStore
from .keys import validate_kernel_id

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kernels (
    kernel_id TEXT PRIMARY KEY,
    record    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS states (
    kernel_id  TEXT PRIMARY KEY,
    blob       BLOB NOT NULL,
    meta       TEXT NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS states_expires_at ON states(expires_at);
CREATE TABLE IF NOT EXISTS host_leases (
    kernel_id  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    boot_id    TEXT NOT NULL
);
"""
# Leases expire by this host's monotonic clock (CLOCK_MONOTONIC is one clock for every
# process of a boot), so setting the wall clock neither frees a live lease nor keeps a dead
# one; ``boot_id`` tells a lease from before a reboot (expired: its holder is gone). The
# ``leases`` table of earlier versions (wall-clock expiry) is no longer read.


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # not Linux: one id per process start; still monotonic within a boot
        return f"no-boot-id-{os.getpid()}-{time.time_ns()}"


BOOT_ID = _boot_id()

# sqlite3 error texts that mean "cannot get at the database right now"
_UNAVAILABLE_HINTS = ("locked", "busy", "unable to open", "disk i/o", "readonly", "read-only")


def sqlite_path(url: str) -> str:
    """Return the absolute file path of a ``sqlite:///abs/path`` URL."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme != "sqlite" or parts.netloc or not path.startswith("/") or path == "/":
        raise StoreConfigError(
            url,
            "open_kernel_store",
            "expected sqlite:///absolute/path/to/kcr.db (three slashes, absolute path)",
        )
    return path


class SqliteKernelStore(KernelStore):
    """:class:`KernelStore` in a local SQLite file (WAL mode), for one machine.

    The file and its parent folder are created on first use. ``timeout`` is the
    busy timeout in seconds: a write that cannot get the lock within it raises
    :class:`StoreUnavailable`.
    """

    local = True

    def __init__(
        self,
        url: str,
        *,
        state_ttl: float | None = None,
        max_state_bytes: int | None = None,
        timeout: float = 5.0,
    ):
        check_settings(url, state_ttl, max_state_bytes)
        self.url = url
        self.path = sqlite_path(url)
        self.state_ttl = state_ttl
        self.max_state_bytes = max_state_bytes
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._closed = False

    # -- plumbing -------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. Two processes opening a new database at once can get "database is
        locked" here without SQLite's busy handler being consulted: retry until the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _run_sync(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreError(self.url, operation, "the store is closed")
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return fn(self._conn)
            except sqlite3.Error as e:
                text = str(e)
                if isinstance(e, sqlite3.OperationalError) and any(
                    h in text.lower() for h in _UNAVAILABLE_HINTS
                ):
                    raise StoreUnavailable(self.url, operation, f"SQLite: {text}") from e
                raise StoreError(self.url, operation, f"SQLite: {text}") from e
            except OSError as e:
                raise StoreUnavailable(self.url, operation, f"cannot open {self.path}: {e}") from e

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run_sync, operation, fn)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- kernel records -------------------------------------------------
    async def put_kernel(self, kernel_id: str, record: dict[str, Any]) -> None:
        op = f"put_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        data = dump_json(record, "kernel record")
        await self._run(
            op,
            lambda c: c.execute(
                "INSERT INTO kernels(kernel_id, record) VALUES (?, ?) "
                "ON CONFLICT(kernel_id) DO UPDATE SET record = excluded.record",
                (kernel_id, data),
            ),
        )

    async def get_kernel(self, kernel_id: str) -> dict[str, Any] | None:
        op = f"get_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        row = await self._run(
            op,
            lambda c: c.execute(
                "SELECT record FROM kernels WHERE kernel_id = ?", (kernel_id,)
            ).fetchone(),
        )
        return None if row is None else json.loads(row[0])

    async def list_kernels(self) -> list[dict[str, Any]]:
        rows = await self._run(
            "list_kernels()",
            lambda c: c.execute("SELECT record FROM kernels ORDER BY kernel_id").fetchall(),
        )
        return [json.loads(r[0]) for r in rows]

    async def delete_kernel(self, kernel_id: str) -> None:
        op = f"delete_kernel({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)

        def run(c: sqlite3.Connection) -> None:
            def body() -> None:
                for table in ("kernels", "states", "host_leases"):
                    c.execute(f"DELETE FROM {table} WHERE kernel_id = ?", (kernel_id,))

            self._transaction(c, body)

        await self._run(op, run)

    # -- state blobs ----------------------------------------------------
    async def put_state(self, kernel_id: str, blob: bytes, meta: dict[str, Any]) -> None:
        op = f"put_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        blob = check_blob(self.url, kernel_id, blob, self.max_state_bytes)
        meta_json = dump_json(meta, "state meta")

        def run(c: sqlite3.Connection) -> None:
            now = time.time()
            expires = None if self.state_ttl is None else now + self.state_ttl

            def body() -> None:
                c.execute("DELETE FROM states WHERE expires_at <= ?", (now,))
                c.execute(
                    "INSERT INTO states(kernel_id, blob, meta, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(kernel_id) DO UPDATE SET blob = excluded.blob, "
                    "meta = excluded.meta, expires_at = excluded.expires_at",
                    (kernel_id, blob, meta_json, expires),
                )

            self._transaction(c, body)

        await self._run(op, run)

    async def get_state(self, kernel_id: str) -> tuple[bytes, dict[str, Any]] | None:
        op = f"get_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)

        def run(c: sqlite3.Connection) -> tuple[bytes, str] | None:
            now = time.time()
            row = c.execute(
                "SELECT blob, meta, expires_at FROM states WHERE kernel_id = ?", (kernel_id,)
            ).fetchone()
            if row is None:
                return None
            if row[2] is not None and row[2] <= now:
                c.execute(
                    "DELETE FROM states WHERE kernel_id = ? AND expires_at <= ?", (kernel_id, now)
                )
                return None
            return bytes(row[0]), row[1]

        row = await self._run(op, run)
        return None if row is None else (row[0], json.loads(row[1]))

    async def delete_state(self, kernel_id: str) -> None:
        op = f"delete_state({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        await self._run(
            op, lambda c: c.execute("DELETE FROM states WHERE kernel_id = ?", (kernel_id,))
        )

    # -- leases ---------------------------------------------------------
    async def acquire_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        op = f"acquire_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        ttl = check_ttl(ttl)

        def run(c: sqlite3.Connection) -> bool:
            now = time.monotonic()
            # One statement, hence atomic: insert, or take over only if ours or expired.
            cur = c.execute(
                "INSERT INTO host_leases(kernel_id, owner, expires_at, boot_id) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT(kernel_id) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at, boot_id = excluded.boot_id "
                "WHERE host_leases.owner = excluded.owner OR host_leases.expires_at <= ? "
                "OR host_leases.boot_id != excluded.boot_id",
                (kernel_id, owner, now + ttl, BOOT_ID, now),
            )
            return cur.rowcount == 1

        return await self._run(op, run)

    async def renew_lease(self, kernel_id: str, owner: str, ttl: float) -> bool:
        op = f"renew_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        ttl = check_ttl(ttl)

        def run(c: sqlite3.Connection) -> bool:
            now = time.monotonic()
            cur = c.execute(
                "UPDATE host_leases SET expires_at = ? "
                "WHERE kernel_id = ? AND owner = ? AND expires_at > ? AND boot_id = ?",
                (now + ttl, kernel_id, owner, now, BOOT_ID),
            )
            return cur.rowcount == 1

        return await self._run(op, run)

    async def release_lease(self, kernel_id: str, owner: str) -> None:
        op = f"release_lease({kernel_id!r}, {owner!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        check_owner(owner)
        await self._run(
            op,
            lambda c: c.execute(
                "DELETE FROM host_leases WHERE kernel_id = ? AND owner = ?", (kernel_id, owner)
            ),
        )

    async def lease_owner(self, kernel_id: str) -> str | None:
        op = f"lease_owner({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        row = await self._run(
            op,
            lambda c: c.execute(
                "SELECT owner FROM host_leases WHERE kernel_id = ? AND expires_at > ? "
                "AND boot_id = ?",
                (kernel_id, time.monotonic(), BOOT_ID),
            ).fetchone(),
        )
        return None if row is None else row[0]

    # -- lifecycle ------------------------------------------------------
    async def ping(self) -> None:
        await self._run("ping()", lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(run)

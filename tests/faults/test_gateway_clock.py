"""A wall-clock jump neither frees a live lease nor keeps a dead one (the embedded SQLite
store expires leases by the host's monotonic clock); a lease from before a reboot is free."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest

from kcr_kernels.stores import open_kernel_store

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_wall_clock_jump_changes_no_lease(tmp_path, monkeypatch):
    store = open_kernel_store(f"sqlite:///{tmp_path}/kcr.db")
    kernel_id = str(uuid.uuid4())
    real = time.time
    try:
        assert await store.acquire_lease(kernel_id, "gateway-a", 30)
        monkeypatch.setattr(time, "time", lambda: real() + 86400)  # a day forward
        assert not await store.acquire_lease(kernel_id, "gateway-b", 30)
        assert await store.lease_owner(kernel_id) == "gateway-a"
        assert await store.renew_lease(kernel_id, "gateway-a", 0.2)
        monkeypatch.setattr(time, "time", lambda: real() - 86400)  # and a day back
        deadline = time.monotonic() + 10
        while await store.lease_owner(kernel_id) is not None:  # expires after 0.2 s all the same
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.05)
        assert await store.acquire_lease(kernel_id, "gateway-b", 30)
    finally:
        await store.close()


async def test_a_lease_from_before_a_reboot_is_free(tmp_path):
    path = tmp_path / "kcr.db"
    store = open_kernel_store(f"sqlite:///{path}")
    kernel_id = str(uuid.uuid4())
    try:
        await store.ping()  # creates the tables
        with sqlite3.connect(path) as db:  # what a gateway of the previous boot left
            db.execute(
                "INSERT INTO host_leases VALUES (?, 'gone', ?, 'an-earlier-boot')",
                (kernel_id, time.monotonic() + 3600),
            )
        assert await store.lease_owner(kernel_id) is None
        assert await store.acquire_lease(kernel_id, "gateway-b", 30)
    finally:
        await store.close()

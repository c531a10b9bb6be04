"""A killed and restarted gateway takes its kernels back at once; a kernel that another live
replica holds makes the client wait visibly (busy, then one stderr line)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kcr_kernels.stores import open_kernel_store
from tests.faults.gateway_procs import FAST_LEASES, GatewayProcess
from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAITING = "[kcr] Waiting for gateway replica"


async def wait_checkpointed(store_url: str, kernel_id: str, timeout: float = 30) -> None:
    store = open_kernel_store(store_url)
    try:
        deadline = time.monotonic() + timeout
        while await store.get_state(kernel_id) is None:
            assert time.monotonic() < deadline, "no checkpoint"
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_a_killed_gateway_restarted_takes_its_kernels_back_at_once(tmp_path):
    data = tmp_path / "kcr"
    lease_ttl = 120  # a restart that waited for the dead gateway's leases would time out below
    options = [*FAST_LEASES, f"--KCRLeaseKeeper.lease_ttl={lease_ttl}"]
    first = await asyncio.to_thread(GatewayProcess(data, *options).start)
    try:
        kernel_id = await start_kernel(first.base)
        client = await WSKernelClient.connect(first.base, kernel_id)
        assert (await client.execute("x = 41")).content["status"] == "ok"
        client.close()
        await wait_checkpointed(f"sqlite:///{data}/kcr.db", kernel_id)
    finally:
        first.kill()  # SIGKILL: no clean shutdown, its lease stays in the store

    second = await asyncio.to_thread(GatewayProcess(data, *options).start)
    try:
        listed = (await http(second.base, "GET", "/api/kernels")).json()
        assert [(k["id"], k["execution_state"]) for k in listed] == [(kernel_id, "hibernated")]
        model = (await http(second.base, "GET", f"/api/kernels/{kernel_id}")).json()
        assert model["execution_state"] == "hibernated"

        client = await WSKernelClient.connect(second.base, kernel_id)
        started = time.monotonic()
        r = await client.execute("print(x + 1)", timeout=lease_ttl / 2)
        assert r.content["status"] == "ok" and r.stdout == "42\n"
        assert time.monotonic() - started < lease_ttl / 2
        assert WAITING not in r.stderr
        client.close()
    finally:
        second.kill()


async def test_a_kernel_held_by_a_live_replica_is_busy_then_says_why(tmp_path, redis_url):
    fast = {"checkpoint_delay": 0.05, "lease_interval": 0.1, "handoff_timeout": 60}
    one = {"python": {"warm": 1}}
    a = await start_gateway(tmp_path / "a", manager=fast, kernel_store_url=redis_url, pools=one)
    b = await start_gateway(tmp_path / "b", manager=fast, kernel_store_url=redis_url, pools=one)
    try:
        base_a, base_b = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
        kernel_id = await start_kernel(base_a)
        on_a = await WSKernelClient.connect(base_a, kernel_id)
        await on_a.execute("value = 7")
        long_cell = on_a.send(on_a.make("execute_request", {"code": "import time; time.sleep(3)"}))
        await wait_for(
            lambda: a.kernel_manager.get_kernel(kernel_id).session.execution_state == "busy",
            30,
            "A busy",
        )

        on_b = await WSKernelClient.connect(base_b, kernel_id)
        r = await on_b.execute("print(value * 6)", timeout=60)
        assert r.content["status"] == "ok" and r.stdout == "42\n"
        states = [m["content"]["execution_state"] for m in r.iopub if m["msg_type"] == "status"]
        assert states[0] == "busy"
        waiting = [
            m for m in r.iopub if m["msg_type"] == "stream" and WAITING in m["content"]["text"]
        ]
        assert len(waiting) == 1
        assert a.kernel_manager.owner in waiting[0]["content"]["text"]
        await wait_for(lambda: long_cell.reply is not None, 30, "A's reply")
        assert long_cell.reply["content"]["status"] == "ok"  # A finished its cell first
        on_a.close()
        on_b.close()
        assert (await http(base_b, "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    finally:
        await a.stop_async()
        await b.stop_async()

"""A debug session cannot move with its pod: after a move the debugger is cleanly off, and the
next debug requests are answered by the new pod's kernel (the debugger can be turned on again).
"""

from __future__ import annotations

import pytest

from tests.gateway import test_durability
from tests.gateway.conftest import wait_for
from tests.gateway.test_durability import DAP_INITIALIZE, checkpointed, kill_pod

# The durable gateway (fast checkpoints and leases) of test_durability, one for this module.
durable = test_durability.durable
on_durable = test_durability.on_durable

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def dap(client, seq: int, command: str, arguments: dict | None = None) -> dict:
    request = {"type": "request", "seq": seq, "command": command, "arguments": arguments or {}}
    entry = client.send(client.make("debug_request", request, "control"))
    await wait_for(lambda: entry.reply is not None, 60, f"{command} reply")
    return entry.reply["content"]


async def test_debug_requests_after_a_move_are_answered_and_the_debugger_restarts(
    durable, on_durable
):
    kernel_id, client = on_durable
    assert (await dap(client, 1, "initialize", DAP_INITIALIZE))["success"]
    assert (await dap(client, 2, "attach"))["success"]
    assert (await dap(client, 3, "debugInfo"))["body"]["isStarted"] is True
    await client.execute("x = 1")
    await checkpointed(durable, kernel_id)
    await kill_pod(durable, kernel_id)
    # A debug request is what a front end may send first after the move (no cell ran yet).
    info = await dap(client, 4, "debugInfo")
    assert info["success"] and info["body"]["isStarted"] is False, info
    # ... and the client was told that the old debug session ended (parent: the last request)
    seen = [*client.unclaimed, *(m for e in client.pending.values() for m in e.iopub)]
    terminated = [
        m
        for m in seen
        if m["msg_type"] == "debug_event" and m["content"].get("event") == "terminated"
    ]
    assert terminated, [m["msg_type"] for m in seen]
    # The debugger can be switched on again on the new pod.
    assert (await dap(client, 5, "initialize", DAP_INITIALIZE))["success"]
    assert (await dap(client, 6, "attach"))["success"]
    r = await client.execute("print(x)")
    assert r.stdout == "1\n"

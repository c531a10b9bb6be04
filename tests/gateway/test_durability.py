"""Kernels that outlive their pod: checkpoints, recovery, hibernation, restarts, replicas."""

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from kcr_kernels.stores import StoreUnavailable
from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAST = {"checkpoint_delay": 0.05, "lease_interval": 0.1, "lease_ttl": 3.0}

NAMESPACE = """
import numpy as np
import json as js
from os.path import join
counter = 41
def greet(name):
    return f"hello {name}"
class Point:
    def __init__(self, x):
        self.x = x
p = Point(3)
arr = np.arange(5)
"""
CHECK = "print(counter + 1, greet('kcr'), p.x, arr.sum(), js.dumps([1]), join('a', 'b'))"
CHECK_OUT = "42 hello kcr 3 10 [1] a/b\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def durable(tmp_path_factory):
    app = await start_gateway(tmp_path_factory.mktemp("durable"), manager=FAST)
    yield app
    await app.stop_async()


def base(app) -> str:
    return f"http://127.0.0.1:{app.port}"


async def checkpointed(app, kernel_id: str, timeout: float = 30) -> tuple:
    """Wait until the kernel's latest cell is in a saved checkpoint."""
    kernel = app.kernel_manager.get_kernel(kernel_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            state = await app.kernel_store.get_state(kernel_id)
        except StoreUnavailable:  # a store that was down, until the gateway sees it back
            state = None
        if state is not None and not kernel.dirty and not kernel.checkpoint_lock.locked():
            return state
        assert loop.time() < deadline, "no checkpoint after the cell"
        await asyncio.sleep(0.02)


async def kill_pod(app, kernel_id: str) -> None:
    """SIGKILL the kernel's runner and wait until the gateway has noticed."""
    kernel = app.kernel_manager.get_kernel(kernel_id)
    process = kernel.pod.meta["process"]
    os.killpg(os.getpgid(process.pid), signal.SIGKILL)
    await wait_for(lambda: not kernel.attached, 30, "pod loss noticed")


@pytest_asyncio.fixture(loop_scope="module")
async def on_durable(durable):
    """(kernel id, connected client) on the shared durable gateway; deleted afterwards."""
    kernel_id = await start_kernel(base(durable))
    client = await WSKernelClient.connect(base(durable), kernel_id)
    yield kernel_id, client
    client.close()
    await http(base(durable), "DELETE", f"/api/kernels/{kernel_id}")


async def test_variables_survive_the_loss_of_the_pod(durable, on_durable):
    kernel_id, client = on_durable
    r = await client.execute(NAMESPACE)
    assert r.content["status"] == "ok"
    await checkpointed(durable, kernel_id)
    old_pod = durable.kernel_manager.get_kernel(kernel_id).pod.name
    await kill_pod(durable, kernel_id)
    r = await client.execute(CHECK)
    assert r.content["status"] == "ok", r.content
    assert r.stdout == CHECK_OUT
    assert "moved to a new pod" in r.stderr and "State restored as of" in r.stderr
    assert r.content["execution_count"] == 2  # numbering goes on where it was
    assert durable.kernel_manager.get_kernel(kernel_id).pod.name != old_pod


async def test_a_cell_running_when_the_pod_dies_gets_a_clear_error(durable, on_durable):
    kernel_id, client = on_durable
    await client.execute("kept = 'yes'")
    await checkpointed(durable, kernel_id)
    running = client.send(client.make("execute_request", {"code": "import time; time.sleep(60)"}))
    await wait_for(lambda: running.outputs("execute_input"), 30, "cell started")
    await kill_pod(durable, kernel_id)
    await wait_for(lambda: running.reply is not None, 30, "reply of the interrupted cell")
    assert running.reply["content"]["status"] == "error"
    assert running.reply["content"]["ename"] == "KernelDied"
    assert "pod stopped" in running.reply["content"]["evalue"]
    r = await client.execute("print(kept)")
    assert r.stdout == "yes\n"


async def test_unpicklable_values_are_named_after_a_move(durable, on_durable):
    kernel_id, client = on_durable
    await client.execute("import threading; lock = threading.Lock(); fine = 1")
    state = await checkpointed(durable, kernel_id)
    assert "lock" in [e["name"] for e in state[1]["errors"]]
    await kill_pod(durable, kernel_id)
    r = await client.execute("print(fine, 'lock' in dir())")
    assert r.stdout == "1 False\n"
    assert "moved to a new pod" in r.stderr
    assert "Not restored: lock." in r.stderr


async def test_restart_clears_the_checkpoint_too(durable, on_durable):
    kernel_id, client = on_durable
    await client.execute("secret = 1")
    await checkpointed(durable, kernel_id)
    assert (await http(base(durable), "POST", f"/api/kernels/{kernel_id}/restart")).code == 200
    assert await durable.kernel_store.get_state(kernel_id) is None
    await kill_pod(durable, kernel_id)
    r = await client.execute("print('secret' in dir())")
    assert r.stdout == "False\n"


async def test_delete_removes_record_and_state(durable):
    kernel_id = await start_kernel(base(durable))
    client = await WSKernelClient.connect(base(durable), kernel_id)
    await client.execute("x = 1")
    await checkpointed(durable, kernel_id)
    client.close()
    assert (await http(base(durable), "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    assert await durable.kernel_store.get_kernel(kernel_id) is None
    assert await durable.kernel_store.get_state(kernel_id) is None
    assert (await http(base(durable), "GET", f"/api/kernels/{kernel_id}")).code == 404


async def test_oversized_state_warns_and_the_kernel_keeps_working(tmp_path):
    app = await start_gateway(tmp_path, manager=FAST, max_state_bytes=200_000)
    try:
        kernel_id = await start_kernel(base(app))
        client = await WSKernelClient.connect(base(app), kernel_id)
        r = await client.execute("import os; big = os.urandom(2_000_000)")
        kernel = app.kernel_manager.get_kernel(kernel_id)
        await wait_for(
            lambda: any(
                "over the store's limit" in m["content"].get("text", "")
                for m in r.iopub
                if m["msg_type"] == "stream"
            ),
            30,
            "size warning on the cell's stderr",
        )
        assert kernel.dirty
        r = await client.execute("print(len(big))")
        assert r.stdout == "2000000\n"
        client.close()
    finally:
        await app.stop_async()


async def test_hibernation_and_resume_with_state(tmp_path):
    app = await start_gateway(
        tmp_path, manager={**FAST, "cull_idle_timeout": 1, "cull_interval": 1}
    )
    try:
        kernel_id = await start_kernel(base(app))
        client = await WSKernelClient.connect(base(app), kernel_id)
        await client.execute("sleepy = 'zzz'")
        client.close()

        async def state():
            return (await http(base(app), "GET", f"/api/kernels/{kernel_id}")).json()[
                "execution_state"
            ]

        for _ in range(300):
            if await state() == "hibernated":
                break
            await asyncio.sleep(0.05)
        assert await state() == "hibernated"
        assert app.pool.status()["python"]["leased"] == 0
        client = await WSKernelClient.connect(base(app), kernel_id)
        r = await client.execute("print(sleepy)")
        assert r.stdout == "zzz\n"
        assert await state() == "idle"
        client.close()
    finally:
        await app.stop_async()


async def test_kernels_survive_a_gateway_restart(tmp_path):
    app = await start_gateway(tmp_path, manager=FAST)
    kernel_id = await start_kernel(base(app))
    client = await WSKernelClient.connect(base(app), kernel_id)
    await client.execute(NAMESPACE)
    client.close()
    await app.stop_async()

    app = await start_gateway(tmp_path, manager=FAST)
    try:
        listed = (await http(base(app), "GET", "/api/kernels")).json()
        assert [k["id"] for k in listed] == [kernel_id]
        assert listed[0]["execution_state"] == "hibernated"
        client = await WSKernelClient.connect(base(app), kernel_id)
        r = await client.execute(CHECK)
        assert r.stdout == CHECK_OUT
        client.close()
    finally:
        await app.stop_async()


async def test_two_gateways_share_kernels_through_redis(tmp_path, redis_url):
    a = await start_gateway(tmp_path / "a", manager=FAST, kernel_store_url=redis_url)
    b = await start_gateway(tmp_path / "b", manager=FAST, kernel_store_url=redis_url)
    try:
        kernel_id = await start_kernel(base(a))
        on_a = await WSKernelClient.connect(base(a), kernel_id)
        await on_a.execute("shared = [1, 2, 3]")
        assert kernel_id in [k["id"] for k in (await http(base(b), "GET", "/api/kernels")).json()]

        on_b = await WSKernelClient.connect(base(b), kernel_id)
        r = await on_b.execute("shared.append(4); print(shared)")
        assert r.stdout == "[1, 2, 3, 4]\n"
        # Never attached to two pods at once: A handed its pod back.
        assert a.pool.status()["python"]["leased"] == 0
        assert b.pool.status()["python"]["leased"] == 1
        assert await a.kernel_store.lease_owner(kernel_id) == b.kernel_manager.owner

        r = await on_a.execute("print(len(shared))")
        assert r.stdout == "4\n"
        on_a.close()
        on_b.close()
        assert (await http(base(b), "DELETE", f"/api/kernels/{kernel_id}")).code == 204
        assert (await http(base(a), "GET", f"/api/kernels/{kernel_id}")).code == 404
    finally:
        await a.stop_async()
        await b.stop_async()


async def test_redis_outage_at_checkpoint_time_is_a_warning(tmp_path):
    from tests.services import RedisServer, redis_binary

    if not redis_binary():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = RedisServer().start()
    app = await start_gateway(
        tmp_path,
        manager=FAST,
        classes={"KCRCheckpointer": {"retry_delay": 0.2, "retry_max_delay": 0.5}},
        kernel_store_url=redis.url,
    )
    try:
        kernel_id = await start_kernel(base(app))
        client = await WSKernelClient.connect(base(app), kernel_id)
        redis.stop()
        r = await client.execute("during_outage = 1")
        assert r.content["status"] == "ok"
        await wait_for(
            lambda: any(
                "state store failed" in m["content"].get("text", "")
                for m in r.iopub
                if m["msg_type"] == "stream"
            ),
            30,
            "warning about the failed checkpoint",
        )
        redis.start()
        # No further cell: the failed checkpoint is tried again until the store is back.
        _, meta = await checkpointed(app, kernel_id)
        assert "during_outage" in meta["names"]
        r = await client.execute("after_outage = 2")
        assert r.content["status"] == "ok"
        await checkpointed(app, kernel_id)
        client.close()
    finally:
        await app.stop_async()
        redis.close()


async def test_restored_functions_see_the_live_namespace(durable, on_durable):
    kernel_id, client = on_durable
    code = (
        "counter = 1\n"
        "def read():\n    return counter\n"
        "class Box:\n    def get(self):\n        return counter\n"
    )
    await client.execute(code)
    await checkpointed(durable, kernel_id)
    await kill_pod(durable, kernel_id)
    r = await client.execute(
        "counter = 2\nprint(read(), Box().get(), read.__globals__ is globals())"
    )
    assert r.stdout == "2 2 True\n", r.stderr


async def test_a_resume_whose_saved_state_expired_says_so(durable, on_durable):
    kernel_id, client = on_durable
    await client.execute("precious = 1")
    await checkpointed(durable, kernel_id)
    kernel = durable.kernel_manager.get_kernel(kernel_id)
    assert await durable.kernel_manager.hibernate(kernel, "test")
    await durable.kernel_store.delete_state(kernel_id)  # as a state_ttl expiry would
    r = await client.execute("print('precious' in dir())")
    assert r.stdout == "False\n"
    assert "no longer in the store" in r.stderr


async def test_an_interrupt_while_the_kernel_resumes_stops_the_cell(durable, on_durable):
    """The client sees the cell busy while its hibernated kernel is still getting a pod: an
    interrupt then is kept and delivered behind the cell."""
    kernel_id, client = on_durable
    await client.execute("x = 1")
    kernel = durable.kernel_manager.get_kernel(kernel_id)
    assert await durable.kernel_manager.hibernate(kernel, "test")
    running = client.send(client.make("execute_request", {"code": "import time; time.sleep(60)"}))
    await wait_for(lambda: any(m["msg_type"] == "status" for m in running.iopub), 30, "busy")
    assert (await http(base(durable), "POST", f"/api/kernels/{kernel_id}/interrupt")).code == 204
    await wait_for(lambda: running.reply is not None, 30, "reply of the interrupted cell")
    assert running.reply["content"]["ename"] == "KeyboardInterrupt"
    r = await client.execute("print(x)")
    assert r.stdout == "1\n"


DAP_INITIALIZE = {
    "clientID": "kcr-test",
    "adapterID": "",
    "pathFormat": "path",
    "linesStartAt1": True,
    "columnsStartAt1": True,
    "supportsVariableType": True,
}


async def test_widgets_are_closed_and_the_debugger_ends_when_the_kernel_moves(durable, on_durable):
    """Comms and debug sessions live in the pod's kernel process: after a move the client
    gets comm_close for each (the front end shows the widget as disconnected, not hanging),
    a DAP 'terminated' event, and the move notice says so."""
    kernel_id, client = on_durable
    r = await client.execute("import ipywidgets as w\ns = w.IntSlider()\ndisplay(s)")
    opened = {c["comm_id"] for c in r.outputs("comm_open")}
    assert len(opened) == 3
    for seq, command, arguments in [(1, "initialize", DAP_INITIALIZE), (2, "attach", {})]:
        request = {"type": "request", "seq": seq, "command": command, "arguments": arguments}
        attach = client.send(client.make("debug_request", request, "control"))
        await wait_for(lambda e=attach: e.reply is not None, 30, f"{command} reply")
    assert attach.reply["content"]["success"], attach.reply["content"]
    await checkpointed(durable, kernel_id)
    await kill_pod(durable, kernel_id)
    r = await client.execute("print('moved')")
    assert r.stdout == "moved\n"
    closed = {c["comm_id"] for c in r.outputs("comm_close")}
    assert closed == opened
    events = [c for c in r.outputs("debug_event") if c.get("event") == "terminated"]
    assert events
    assert "moved to a new pod" in r.stderr
    assert "3 widget comm(s) were closed" in r.stderr and "debug session ended" in r.stderr
    # the new kernel has no comms, and a new slider works
    info = await client.request("comm_info_request", {})
    assert info.content["comms"] == {}
    r = await client.execute("s2 = w.IntSlider()\ndisplay(s2)")
    assert len(r.outputs("comm_open")) == 3

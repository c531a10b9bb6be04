"""Issue 13's "bad input" for comms, at full size, through a real gateway and sandboxed pod.

(``tests/gateway/test_ipykernel_features.py`` covers unknown comm ids, a 1,000-message flood,
an 8 MB client widget state and malformed DAP messages.) Here: 10,000 ``comm_msg`` sent at
once, a 50 MB widget state sent by a client and one created by the kernel. None may wedge
the kernel or the gateway: each is answered or refused with a clear close code, and the
kernel answers the next client.
"""

from __future__ import annotations

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.gateway.conftest import WSKernelClient, http, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1024 * 1024


async def connect(base_url: str, kernel_id: str, max_message_size: int = 10 * MiB):
    url = base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url), max_message_size=max_message_size)
    return WSKernelClient(ws, kernel_id)


async def model_id(kernel, code: str) -> str:
    r = await kernel.execute(f"{code}\nw_.model_id")
    assert r.content["status"] == "ok", r.content
    return r.outputs("execute_result")[0]["data"]["text/plain"].strip("'")


async def test_ten_thousand_comm_msgs_at_once_do_not_wedge_the_kernel(kernel, base_url):
    comm_id = await model_id(kernel, "import ipywidgets as w\nw_ = w.IntText()")
    last = None
    for i in range(10_000):
        last = kernel.send(
            kernel.make(
                "comm_msg",
                {"comm_id": comm_id, "data": {"method": "update", "state": {"value": i}}},
            )
        )

    def handled_all() -> bool:
        return any(m["msg_type"] == "status" for m in last.iopub)

    # Each is taken (in order) or refused: beyond the gateway's queue limit with a
    # KernelQueueFull reply, and when they arrive faster than its frame-rate limit allows
    # (KCRWebsocketConnection.frame_burst) by closing the socket with 1008 and the limit in
    # the reason. Which happens depends on how fast this client's frames arrive, so all are
    # accepted; a hang is not.
    await wait_for(lambda: kernel.closed.is_set() or handled_all(), 180, "all handled or refused")
    if kernel.closed.is_set():
        assert kernel.ws.close_code == 1008, (kernel.ws.close_code, kernel.ws.close_reason)
        assert "frames per second" in (kernel.ws.close_reason or "")
    # The last message was taken (not refused with a KernelQueueFull reply): it won.
    expected = "9999" if not kernel.closed.is_set() and last.reply is None else "True"
    # Either way the kernel answers the next request (on a new connection).
    other = await connect(base_url, kernel.kernel_id)
    try:
        code = "print(w_.value)" if expected == "9999" else "print(isinstance(w_.value, int))"
        r = await other.execute(code, timeout=120)
        assert r.stdout == f"{expected}\n", (r.content, r.stderr)
        assert (await http(base_url, "GET", "/api")).code == 200
    finally:
        other.close()


async def test_a_50_mb_widget_state_from_a_client_is_refused_and_the_kernel_goes_on(
    kernel, base_url
):
    comm_id = await model_id(kernel, "import ipywidgets as w\nw_ = w.Text()")
    big = "x" * (50 * MiB)
    kernel.send(
        kernel.make(
            "comm_msg",
            {"comm_id": comm_id, "data": {"method": "update", "state": {"value": big}}},
        )
    )
    # Larger than the gateway's websocket_max_message_size (10 MiB): closed before it is read.
    await wait_for(lambda: kernel.closed.is_set(), 60, "the socket closed")
    assert kernel.ws.close_code == 1009, (kernel.ws.close_code, kernel.ws.close_reason)
    other = await connect(base_url, kernel.kernel_id)
    try:
        r = await other.execute("print(len(w_.value))")
        assert r.stdout == "0\n", (r.content, r.stderr)
    finally:
        other.close()


async def test_a_50_mb_widget_state_from_the_kernel_reaches_a_client_that_takes_it(
    kernel, base_url
):
    big = await connect(base_url, kernel.kernel_id, max_message_size=256 * MiB)
    try:
        r = await big.execute(
            "import ipywidgets as w\nt = w.Textarea(value='x' * (50 * 1024 * 1024))\nt",
            timeout=120,
        )
        assert r.content["status"] == "ok", r.content
        states = [o["data"]["state"] for o in r.outputs("comm_open")]
        textarea = [s for s in states if s.get("_model_name") == "TextareaModel"]
        assert textarea and len(textarea[0]["value"]) == 50 * MiB
        r = await big.execute("1 + 1")
        assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
    finally:
        big.close()

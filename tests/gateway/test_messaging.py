"""Jupyter messaging over the gateway's kernel WebSocket, against real sandboxed pods."""

import asyncio
import json

import pytest

from tests.gateway.conftest import WSKernelClient, http, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_execute_result_with_busy_idle_and_input_echo(kernel):
    r = await kernel.execute("1 + 1")
    assert r.content["status"] == "ok"
    count = r.content["execution_count"]
    assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
    assert r.outputs("execute_result")[0]["execution_count"] == count
    assert r.outputs("execute_input") == [{"code": "1 + 1", "execution_count": count}]
    states = [c["execution_state"] for c in r.outputs("status")]
    assert states[0] == "busy" and states[-1] == "idle"
    parent_ids = {m["parent_header"]["msg_id"] for m in r.iopub} | {
        r.reply["parent_header"]["msg_id"]
    }
    assert len(parent_ids) == 1
    assert r.reply["header"]["msg_type"] == "execute_reply"
    assert r.reply["header"]["session"]


async def test_every_output_type(kernel):
    code = """
import sys
from IPython.display import display, HTML, clear_output, update_display
print("out")
print("err", file=sys.stderr)
display(HTML("<b>bold</b>"))
h = display("first", display_id=True)
h.update("second")
clear_output(wait=True)
"""
    r = await kernel.execute(code)
    assert r.content["status"] == "ok"
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    html = [c for c in r.outputs("display_data") if "text/html" in c["data"]]
    assert html[0]["data"]["text/html"] == "<b>bold</b>"
    updates = r.outputs("update_display_data")
    assert updates and updates[0]["data"]["text/plain"] == "'second'"
    assert updates[0]["transient"]["display_id"]
    assert r.outputs("clear_output") == [{"wait": True}]


async def test_error_reply_and_error_output(kernel):
    r = await kernel.execute("1/0")
    assert r.content["status"] == "error"
    assert r.content["ename"] == "ZeroDivisionError"
    error = r.outputs("error")[0]
    assert error["ename"] == "ZeroDivisionError" and error["traceback"]


async def test_stop_on_error_aborts_queued_cells(kernel):
    failing = kernel.send(
        kernel.make("execute_request", {"code": "import time; time.sleep(0.3); 1/0"})
    )
    queued = kernel.send(kernel.make("execute_request", {"code": "print('should not run')"}))
    await wait_for(lambda: queued.reply is not None, 30, "queued cell reply")
    assert failing.reply["content"]["status"] == "error"
    assert queued.reply["content"]["status"] == "aborted"
    assert "should not run" not in "".join(c.get("text", "") for c in queued.outputs("stream"))
    after = await kernel.execute("print('runs again')")
    assert after.stdout == "runs again\n"


async def test_state_persists_between_cells(kernel):
    await kernel.execute("x = 41")
    r = await kernel.execute("x + 1")
    assert r.outputs("execute_result")[0]["data"]["text/plain"] == "42"


async def test_interrupt_over_rest_stops_a_busy_loop(kernel, base_url):
    await kernel.execute("survivor = 'still here'")
    running = kernel.send(kernel.make("execute_request", {"code": "while True: pass"}))
    await wait_for(lambda: running.outputs("execute_input"), 30, "cell started")
    r = await http(base_url, "POST", f"/api/kernels/{kernel.kernel_id}/interrupt")
    assert r.code == 204
    await wait_for(lambda: running.reply is not None, 30, "interrupted cell reply")
    assert running.reply["content"]["ename"] == "KeyboardInterrupt"
    again = await kernel.execute("survivor")
    assert again.outputs("execute_result")[0]["data"]["text/plain"] == "'still here'"


async def test_interrupt_over_the_control_channel_stops_sleep(kernel):
    running = kernel.send(kernel.make("execute_request", {"code": "import time; time.sleep(100)"}))
    await wait_for(lambda: running.outputs("execute_input"), 30, "cell started")
    # No busy/idle for a control request while a cell runs: that would tell
    # clients the kernel is idle. So wait for the reply alone.
    interrupt = kernel.send(kernel.make("interrupt_request", {}, channel="control"))
    await wait_for(lambda: interrupt.reply is not None, 30, "interrupt_reply")
    assert interrupt.reply["msg_type"] == "interrupt_reply"
    assert interrupt.reply["channel"] == "control"
    await wait_for(lambda: running.reply is not None, 30, "interrupted cell reply")
    assert running.reply["content"]["ename"] == "KeyboardInterrupt"


async def test_kernel_info_is_answered_even_while_a_cell_runs(kernel):
    running = kernel.send(kernel.make("execute_request", {"code": "import time; time.sleep(2)"}))
    await wait_for(lambda: running.outputs("execute_input"), 30, "cell started")
    info = kernel.send(kernel.make("kernel_info_request", {}))
    await wait_for(lambda: info.reply is not None, 5, "kernel_info_reply during a cell")
    assert running.reply is None
    content = info.reply["content"]
    assert content["language_info"]["name"] == "python"
    assert content["protocol_version"] == "5.3"
    await wait_for(lambda: running.reply is not None, 30, "cell finished")


async def test_stdin_round_trip(kernel):
    async def answer(client, msg):
        assert msg["msg_type"] == "input_request"
        assert msg["content"]["prompt"] == "name? "
        await client.input_reply("Ada")

    kernel.on_input = answer
    r = await kernel.execute("n = input('name? '); print('hello', n)", allow_stdin=True)
    assert r.stdout.endswith("hello Ada\n")
    assert len(r.stdin) == 1


async def test_input_without_stdin_is_a_clear_error(kernel):
    r = await kernel.execute("input('x')", allow_stdin=False)
    assert r.content["status"] == "error"
    assert "StdinNotImplementedError" in r.content["ename"]


async def test_complete_inspect_is_complete_history_comm_info(kernel):
    await kernel.execute("my_variable = 1")
    c = await kernel.request("complete_request", {"code": "my_var", "cursor_pos": 6})
    assert "my_variable" in c.content["matches"]
    i = await kernel.request("inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0})
    assert i.content["found"] and "text/plain" in i.content["data"]
    ok = await kernel.request("is_complete_request", {"code": "x = 1"})
    assert ok.content["status"] == "complete"
    more = await kernel.request("is_complete_request", {"code": "for i in range(3):"})
    assert more.content["status"] == "incomplete"
    h = await kernel.request(
        "history_request", {"hist_access_type": "tail", "n": 5, "output": False, "raw": True}
    )
    assert h.content["status"] == "ok"
    ci = await kernel.request("comm_info_request", {})
    assert ci.reply["msg_type"] == "comm_info_reply"
    assert "comms" in ci.content


async def test_two_clients_both_see_iopub_and_reconnect_keeps_the_kernel(base_url):
    kernel_id = await start_kernel(base_url)
    a = await WSKernelClient.connect(base_url, kernel_id)
    b = await WSKernelClient.connect(base_url, kernel_id)
    try:
        model = (await http(base_url, "GET", f"/api/kernels/{kernel_id}")).json()
        assert model["connections"] == 2
        r = await a.execute("value = 7; print('shared')")
        await wait_for(
            lambda: any(m["msg_type"] == "stream" for m in b.unclaimed), 10, "b sees a's output"
        )
        assert (
            next(m for m in b.unclaimed if m["msg_type"] == "stream")["content"]["text"]
            == "shared\n"
        )
        assert r.reply is not None
        a.close()
        a = await WSKernelClient.connect(base_url, kernel_id)
        again = await a.execute("value")
        assert again.outputs("execute_result")[0]["data"]["text/plain"] == "7"
    finally:
        a.close()
        b.close()
        await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")


async def test_restart_clears_state_and_the_open_socket_keeps_working(kernel, base_url):
    await kernel.execute("doomed = 1")
    r = await http(base_url, "POST", f"/api/kernels/{kernel.kernel_id}/restart")
    assert r.code == 200
    after = await kernel.execute("'doomed' in dir()")
    assert after.outputs("execute_result")[0]["data"]["text/plain"] == "False"


async def test_shutdown_request_with_restart_over_control(kernel):
    await kernel.execute("doomed = 1")
    r = await kernel.request("shutdown_request", {"restart": True}, channel="control")
    assert r.content == {"status": "ok", "restart": True}
    await wait_for(lambda: kernel.unclaimed is not None, 1, "noop")
    after = await kernel.execute("'doomed' in dir()", timeout=60)
    assert after.outputs("execute_result")[0]["data"]["text/plain"] == "False"


async def test_bad_frames_do_not_hurt_the_kernel_or_gateway(kernel, base_url):
    for frame in ("{not json", b"\x00\x01binary garbage"):  # close the socket (1007)
        bad = await WSKernelClient.connect(base_url, kernel.kernel_id)
        await bad.ws.write_message(frame, binary=isinstance(frame, bytes))
        await wait_for(bad.closed.is_set, 30, "socket closed after a bad frame")
        assert bad.ws.close_code == 1007
        bad.close()
    await kernel.ws.write_message(json.dumps({"no": "header"}))
    await kernel.ws.write_message(json.dumps({"header": {"msg_id": "1"}, "content": {}}))
    unknown = await kernel.request("frobnicate_request", {})
    assert unknown.reply["msg_type"] == "frobnicate_reply"
    assert unknown.content["status"] == "error"
    r = await kernel.execute("'alive'")
    assert r.outputs("execute_result")[0]["data"]["text/plain"] == "'alive'"
    assert (await http(base_url, "GET", "/api")).code == 200


async def test_websocket_to_an_unknown_kernel_is_refused(base_url):
    with pytest.raises(Exception) as info:
        await WSKernelClient.connect(base_url, "00000000-0000-0000-0000-000000000000")
    assert "404" in str(info.value)


async def test_v1_websocket_protocol(base_url):
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    kernel_id = await start_kernel(base_url)
    url = base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url), subprotocols=["v1.kernel.websocket.jupyter.org"])
    try:
        assert ws.selected_subprotocol == "v1.kernel.websocket.jupyter.org"
        helper = WSKernelClient.__new__(WSKernelClient)
        helper.session = "v1"
        msg = WSKernelClient.make(helper, "execute_request", {"code": "6*7", "silent": False})
        parts = [
            json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")
        ]
        await ws.write_message(serialize_msg_to_ws_v1(parts, "shell"), binary=True)
        result = None
        while result is None:
            channel, parts = deserialize_msg_from_ws_v1(
                await asyncio.wait_for(ws.read_message(), 30)
            )
            header = json.loads(parts[0])
            if header["msg_type"] == "execute_result":
                assert channel == "iopub"
                result = json.loads(parts[3])
        assert result["data"]["text/plain"] == "42"
    finally:
        ws.close()
        await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")


async def test_a_cell_sent_after_an_error_reply_is_not_aborted(kernel):
    """stop_on_error aborts what was queued before the error, not what the client sends after
    it saw the error reply (even before the kernel went idle)."""
    for _ in range(5):
        failed = kernel.send(kernel.make("execute_request", {"code": "1/0"}))
        await wait_for(lambda f=failed: f.reply is not None, 30, "error reply")
        assert failed.reply["content"]["status"] == "error"
        after = kernel.send(kernel.make("execute_request", {"code": "print('ran')"}))
        await wait_for(lambda a=after: a.reply is not None, 30, "reply of the next cell")
        assert after.reply["content"]["status"] == "ok"


async def test_an_interrupt_sent_right_after_an_execute_is_never_lost(kernel, base_url):
    """A client may interrupt as soon as it has sent the cell (it sees busy, not yet the
    cell's execute_input): the interrupt must still stop that cell."""
    for _ in range(5):
        running = kernel.send(
            kernel.make("execute_request", {"code": "import time; time.sleep(60)"})
        )
        await wait_for(
            lambda r=running: any(m["msg_type"] == "status" for m in r.iopub), 30, "busy"
        )
        r = await http(base_url, "POST", f"/api/kernels/{kernel.kernel_id}/interrupt")
        assert r.code == 204
        await wait_for(lambda r=running: r.reply is not None, 30, "interrupted cell's reply")
        assert running.reply["content"]["ename"] == "KeyboardInterrupt"
    after = await kernel.execute("print('fine')")
    assert after.stdout == "fine\n"

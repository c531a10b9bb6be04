"""Widget comms and the debugger through Jupyter Server's GatewayClient, as JupyterLab uses them.

JupyterLab's widget manager refuses a kernel's ``comm_open`` whose message ``metadata`` lacks
ipywidgets' protocol version ("Wrong widget protocol version"), and ipywidgets refuses a front
end's ``comm_open`` the same way; JupyterLab's debugger takes a DAP reply only once the
request's ``idle`` status has arrived, also while a cell is paused at a breakpoint. These are
the message details the browser tests (tests/browser/test_widgets_debugger.py) depend on,
checked here without a browser.
"""

from __future__ import annotations

import contextlib
import uuid

from tests.jupyter_server.client import APIError, KernelChannels, _is_status


@contextlib.asynccontextmanager
async def channels(api):
    model = await api.start_session()
    ch = await KernelChannels.open(api, model["kernel"]["id"], model["id"])
    try:
        yield ch
    finally:
        ch.close()
        with contextlib.suppress(APIError):
            await api.call("DELETE", f"/api/sessions/{model['id']}")


async def test_slider_comm_open_and_comm_msg_cross_the_server(api):
    async with channels(api) as ch:
        info = await ch.request("comm_info_request", {"target_name": "jupyter.widget"})
        assert info["content"]["status"] == "ok", info["content"]
        run = await ch.execute("import ipywidgets as w; s = w.IntSlider(); s")
        opens = [
            m
            for m in run.outputs
            if m["msg_type"] == "comm_open" and m["content"].get("target_name") == "jupyter.widget"
        ]
        assert opens, [m["msg_type"] for m in ch.received]
        assert all(m["channel"] == "iopub" for m in opens)
        # The widget protocol version travels in the message metadata, as ipykernel sends it.
        assert {m["metadata"].get("version", "").split(".")[0] for m in opens} == {"2"}, [
            m["metadata"] for m in opens
        ]
        slider = next(
            m for m in opens if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
        )
        comm_id = slider["content"]["comm_id"]
        ch.send(
            "comm_msg",
            {
                "comm_id": comm_id,
                "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []},
            },
        )
        check = await ch.execute("print(s.value)")
        assert check.stdout.strip() == "7"


def _send_with_metadata(ch: KernelChannels, msg_type: str, content: dict, metadata: dict) -> dict:
    import json

    from jupyter_client.jsonutil import json_default

    msg = ch.session.msg(msg_type, content, metadata=metadata)
    msg["channel"] = "shell"
    msg["buffers"] = []
    ch.ws.write_message(json.dumps(msg, default=json_default))
    return msg


async def test_a_front_end_comm_open_reaches_the_kernel_with_its_metadata(api):
    """What JupyterLab's widget manager does on (re)connecting to a kernel with widgets: open
    the ``jupyter.widget.control`` comm (its control protocol version, 1.0.0, in the metadata;
    ipywidgets refuses the comm without it) and ask for every state."""
    async with channels(api) as ch:
        await ch.execute("import ipywidgets as w; s = w.IntSlider(value=5)")
        comm_id = uuid.uuid4().hex
        _send_with_metadata(
            ch,
            "comm_open",
            {"comm_id": comm_id, "target_name": "jupyter.widget.control", "data": {}},
            {"version": "1.0.0"},
        )
        request = _send_with_metadata(
            ch, "comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}}, {}
        )
        states = await ch.wait_for(
            lambda m: (
                m.get("msg_type") == "comm_msg"
                and m["parent_header"].get("msg_id") == request["header"]["msg_id"]
            ),
            what="the control comm's update_states",
        )
        data = states["content"]["data"]
        assert data["method"] == "update_states", data
        values = [s["state"].get("value") for s in data["states"].values()]
        assert 5 in values, data["states"]


async def test_a_debug_request_while_a_cell_runs_gets_its_reply_and_its_idle(api):
    """JupyterLab's debugger sends DAP requests (stackTrace, scopes, variables) while the cell
    is paused; each one's future ends at its reply *and* its idle status, like ipykernel's."""
    async with channels(api) as ch:
        running = ch.start_execute("import time; time.sleep(3)")
        await ch.wait_busy(running)
        debug = ch.send(
            "debug_request",
            {"type": "request", "seq": 1, "command": "debugInfo", "arguments": {}},
            channel="control",
        )
        msg_id = debug["header"]["msg_id"]
        reply = await ch.wait_for(
            lambda m: (
                m.get("msg_type") == "debug_reply" and m["parent_header"].get("msg_id") == msg_id
            ),
            what="debug_reply",
        )
        assert reply["content"]["success"] is True, reply["content"]
        await ch.wait_for(lambda m: _is_status(m, "busy", msg_id), what="the request's busy")
        await ch.wait_for(lambda m: _is_status(m, "idle", msg_id), what="the request's idle")
        assert not any(_is_status(m, "idle", running) for m in ch.received)  # still running
        done = await ch.finish_execute(running)
        assert done.reply["status"] == "ok"

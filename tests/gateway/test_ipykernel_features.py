"""What works with ipykernel works through kcr: widgets (comms), the kernel object, libraries that
detect a notebook, and the debugger -- through a real gateway with real sandboxed pods."""

import asyncio

import pytest

from tests.gateway.conftest import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _comm_opens(reply) -> list[dict]:
    return reply.outputs("comm_open")


async def _comm_msg(kernel, comm_id: str, data: dict, timeout: float = 30):
    """Send a comm_msg like a front end does and wait for the kernel to have handled it."""
    msg = kernel.make("comm_msg", {"comm_id": comm_id, "data": data})
    entry = kernel.send(msg)
    await wait_for(
        lambda: any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
            for m in entry.iopub
        ),
        timeout,
        "comm_msg handled (idle)",
    )
    return entry


async def _control(kernel, msg_type: str, content: dict, timeout: float = 30) -> dict:
    """A control request answered even while a cell runs (no idle to wait for)."""
    entry = kernel.send(kernel.make(msg_type, content, "control"))
    await wait_for(lambda: entry.reply is not None, timeout, f"{msg_type} reply")
    return entry.reply


async def test_int_slider_opens_its_comms_like_ipykernel(kernel):
    r = await kernel.execute("import ipywidgets as w\ns = w.IntSlider(value=3)\ndisplay(s)")
    assert r.content["status"] == "ok", r.content
    opens = _comm_opens(r)
    # Layout, SliderStyle and the IntSlider itself, as stock ipykernel sends them
    assert len(opens) == 3
    assert {o["target_name"] for o in opens} == {"jupyter.widget"}
    view = [c for c in r.outputs("display_data") if c["data"].get(VIEW)]
    assert view and view[0]["data"][VIEW]["model_id"] == opens[-1]["comm_id"]


VIEW = "application/vnd.jupyter.widget-view+json"


async def test_a_client_comm_msg_moves_a_slider_and_reruns_interact(kernel):
    code = (
        "import ipywidgets as w\n"
        "slider = w.IntSlider(value=1)\n"
        "def show(x):\n"
        "    print('value is', x)\n"
        "ui = w.interactive(show, x=slider)\n"
        "display(ui)\n"
    )
    r = await kernel.execute(code)
    assert r.content["status"] == "ok", r.content
    assert "value is 1" in "".join(c.get("text", "") for c in r.outputs("stream"))
    r_id = await kernel.execute("slider.model_id")
    slider_id = r_id.outputs("execute_result")[0]["data"]["text/plain"].strip("'")
    update = {"method": "update", "state": {"value": 7}, "buffer_paths": []}
    moved = await _comm_msg(kernel, slider_id, update)
    # the interact function ran again because of the client's message, under its header
    assert "value is 7" in "".join(c.get("text", "") for c in moved.outputs("stream"))
    check = await kernel.execute("slider.value")
    assert check.outputs("execute_result")[0]["data"]["text/plain"] == "7"


async def test_output_widget_captures_prints_and_errors(kernel):
    code = (
        "import ipywidgets as w\n"
        "out = w.Output()\n"
        "display(out)\n"
        "with out:\n"
        "    print('inside the widget')\n"
        "with out:\n"
        "    raise ValueError('boom')\n"
    )
    msg = kernel.make(
        "execute_request",
        {"code": code, "silent": False, "store_history": True, "user_expressions": {}},
    )
    r = kernel.send(msg)
    await wait_for(lambda: r.reply is not None, 60, "execute_reply")
    # The Output widget captures by the request's msg_id: the kernel saw the client's own.
    states = [
        c["data"]["state"]
        for c in r.outputs("comm_msg")
        if c["data"].get("method") == "update" and "msg_id" in c["data"].get("state", {})
    ]
    assert {"msg_id": msg["header"]["msg_id"]} in states
    assert "inside the widget" in r.stdout
    assert [e["ename"] for e in r.outputs("error")] == ["ValueError"]
    assert r.content["status"] == "ok"  # the widget swallowed the error, as in ipykernel


async def test_the_kernel_object_and_ipykernel_detection(kernel):
    code = (
        "ip = get_ipython()\n"
        "k = ip.kernel\n"
        "import ipykernel\n"
        "print(type(ip).__name__, 'IPKernelApp' in ip.config, k.shell is ip,\n"
        "      k.session is not None, type(k.comm_manager).__name__)\n"
    )
    r = await kernel.execute(code)
    assert r.content["status"] == "ok", r.content
    assert r.stdout.split() == ["ZMQInteractiveShell", "True", "True", "True", "CommManager"]


async def test_tqdm_auto_picks_the_notebook_bar(kernel):
    code = (
        "from tqdm.auto import tqdm\n"
        "for _ in tqdm(range(3)):\n"
        "    pass\n"
        "from tqdm.notebook import tqdm_notebook\n"
        "print(issubclass(tqdm, tqdm_notebook))\n"
    )
    r = await kernel.execute(code)
    assert r.content["status"] == "ok", r.content
    assert r.stdout.strip() == "True"
    assert _comm_opens(r)  # the bar is a widget


async def test_update_display_reaches_the_display_it_names(kernel):
    r = await kernel.execute("h = display('one', display_id='kcr-d')\nh.update('two')")
    updates = r.outputs("update_display_data")
    assert updates[0]["transient"]["display_id"] == "kcr-d"


async def test_comm_info_lists_open_widgets(kernel):
    await kernel.execute("import ipywidgets as w\nkeep = w.Button()")
    r = await kernel.request("comm_info_request", {"target_name": "jupyter.widget"})
    assert r.content["status"] == "ok"
    assert r.content["comms"]
    assert {c["target_name"] for c in r.content["comms"].values()} == {"jupyter.widget"}


#: Comm messages sent back to back (each is a kernel round trip, as in ipykernel: kept small
#: because the test machine is shared; bench/ measures the rate).
FLOOD = 1000


async def test_bad_comm_input_does_not_wedge_the_kernel(kernel):
    await _comm_msg(kernel, "no-such-comm", {"method": "update", "state": {}})
    await kernel.execute("import ipywidgets as w\nflood = w.IntText()")
    r_id = await kernel.execute("flood.model_id")
    comm_id = r_id.outputs("execute_result")[0]["data"]["text/plain"].strip("'")
    # a flood of updates: the last one wins and the kernel answers afterwards
    last = None
    for i in range(FLOOD):
        last = kernel.send(
            kernel.make(
                "comm_msg",
                {"comm_id": comm_id, "data": {"method": "update", "state": {"value": i}}},
            )
        )
    await wait_for(lambda: any(m["msg_type"] == "status" for m in last.iopub), 120, "flood drained")
    r = await kernel.execute("flood.value")
    assert r.outputs("execute_result")[0]["data"]["text/plain"] == str(FLOOD - 1)
    # a big widget state (8 MB of text; the WebSocket frame limit is the gateway's) goes through
    big = "x" * (8 * 1024 * 1024)
    await _comm_msg(kernel, comm_id, {"method": "update", "state": {"description": big}}, 120)
    r = await kernel.execute("len(flood.description)")
    assert r.outputs("execute_result")[0]["data"]["text/plain"] == str(len(big))


async def test_kernel_info_says_the_debugger_is_there(kernel):
    r = await kernel.request("kernel_info_request", {})
    assert r.content["debugger"] is True
    assert "debugger" in r.content.get("supported_features", [])


async def test_debugger_stops_at_a_breakpoint_and_shows_variables(kernel):
    seq = iter(range(1, 1000))

    async def dap(command: str, arguments: dict | None = None) -> dict:
        content = {
            "type": "request",
            "seq": next(seq),
            "command": command,
            "arguments": arguments or {},
        }
        reply = await _control(kernel, "debug_request", content)
        return reply["content"]

    init = await dap(
        "initialize",
        {
            "clientID": "kcr-test",
            "clientName": "kcr-test",
            "adapterID": "",
            "pathFormat": "path",
            "linesStartAt1": True,
            "columnsStartAt1": True,
            "supportsVariableType": True,
            "supportsVariablePaging": True,
            "supportsRunInTerminalRequest": True,
            "locale": "en",
        },
    )
    assert init["success"], init
    assert (await dap("attach"))["success"]
    code = "a = 40\nb = a + 2\nprint(b)\n"
    dumped = await dap("dumpCell", {"code": code})
    source = dumped["body"]["sourcePath"]
    bp = await dap(
        "setBreakpoints",
        {"breakpoints": [{"line": 2}], "source": {"path": source}, "sourceModified": False},
    )
    assert bp["success"], bp
    assert (await dap("configurationDone"))["success"]
    running = kernel.send(kernel.make("execute_request", {"code": code, "silent": False}))

    def stopped() -> dict | None:
        for m in kernel.unclaimed + running.iopub:
            if m["msg_type"] == "debug_event" and m["content"].get("event") == "stopped":
                return m["content"]
        return None

    await wait_for(lambda: stopped() is not None, 60, "debugger stopped event")
    thread_id = stopped()["body"]["threadId"]
    frames = (await dap("stackTrace", {"threadId": thread_id}))["body"]["stackFrames"]
    scopes = (await dap("scopes", {"frameId": frames[0]["id"]}))["body"]["scopes"]
    ref = scopes[0]["variablesReference"]
    variables = (await dap("variables", {"variablesReference": ref}))["body"]["variables"]
    assert {"a": "40"}.items() <= {v["name"]: v["value"] for v in variables}.items()
    rich = await dap("richInspectVariables", {"variableName": "a", "frameId": frames[0]["id"]})
    assert rich["success"], rich
    assert (await dap("continue", {"threadId": thread_id}))["success"]
    await wait_for(lambda: running.reply is not None, 60, "the cell finishes after continue")
    assert running.reply["content"]["status"] == "ok"
    assert "42" in running.stdout
    await dap("disconnect", {"restart": False, "terminateDebuggee": True})


async def test_malformed_debug_requests_get_an_answer(kernel):
    reply = await _control(kernel, "debug_request", {"type": "request", "seq": 1})
    assert reply["header"]["msg_type"] == "debug_reply"
    reply = await _control(kernel, "debug_request", {"command": "nonsense", "seq": 2})
    assert reply["header"]["msg_type"] == "debug_reply"
    r = await kernel.execute("1 + 1")
    assert r.content["status"] == "ok"
    await asyncio.sleep(0)


async def test_a_new_connection_gets_iopub_welcome_then_a_status(kernel, base_url):
    from tests.gateway.conftest import WSKernelClient

    other = await WSKernelClient.connect(base_url, kernel.kernel_id)
    try:
        await wait_for(lambda: len(other.unclaimed) >= 2, 30, "welcome and status")
        first, second = other.unclaimed[:2]
        assert first["msg_type"] == "iopub_welcome" and first["channel"] == "iopub"
        assert first["content"] == {"subscription": ""}
        assert second["msg_type"] == "status"
        assert second["content"]["execution_state"] in ("idle", "busy")
    finally:
        other.close()

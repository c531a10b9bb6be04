"""The Python worker is ipykernel's own kernel: kernel_info is ipykernel's, the debugger flag
follows debugpy, debug_request is answered while a cell runs, and the worker stays sandboxable."""

from __future__ import annotations

import json


async def test_kernel_info_is_ipykernels_with_the_debugger_flag(shared_runner, channel):
    info = json.loads((await shared_runner.http("GET", "/kernel_info")).body)
    assert info["implementation"] == "kcr-python"
    assert info["debugger"] is True
    assert "debugger" in info["supported_features"]
    assert "kernel subshells" not in info["supported_features"]  # the gateway does not route them
    assert info["language_info"]["name"] == "python"
    _, reply = await channel.request("kernel_info")
    assert reply["content"]["debugger"] is True


async def test_without_debugpy_the_kernel_says_it_has_no_debugger(start_runner, tmp_path):
    shadow = tmp_path / "no-debugpy" / "debugpy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('debugpy is not installed here')\n")
    runner = start_runner(env={"PYTHONPATH": str(shadow.parent)})
    info = json.loads((await runner.http("GET", "/kernel_info")).body)
    assert info["debugger"] is False
    assert "debugger" not in info["supported_features"]
    channel = await runner.channel()
    try:
        _, reply = await channel.request(
            "debug_request", {"type": "request", "seq": 1, "command": "initialize"}
        )
        assert reply["msg_type"] == "debug_reply"  # answered (ipykernel: an empty reply)
        _, ok = await channel.execute("1 + 1")
        assert ok["content"]["status"] == "ok"
    finally:
        await channel.close()


async def test_debug_requests_are_answered_while_a_cell_runs(shared_runner, channel):
    running = await channel.send("execute", {"code": "import time\ntime.sleep(1.5)"})
    await channel.wait_for(lambda f: f.get("id") == running and f["event"] == "execute_input")
    _, reply = await channel.request(
        "debug_request", {"type": "request", "seq": 1, "command": "debugInfo", "arguments": {}}
    )
    assert reply["msg_type"] == "debug_reply"
    assert reply["content"]["success"] is True
    assert not any(f["event"] == "reply" for f in channel.frames[running])  # still running
    done = await channel.reply(running)
    assert done["content"]["status"] == "ok"


async def test_malformed_debug_request_does_not_wedge_the_kernel(channel):
    _, reply = await channel.request("debug_request", {"seq": "x", "command": 42})
    assert reply["msg_type"] == "debug_reply"
    _, ok = await channel.execute("2 + 2")
    assert ok["content"]["status"] == "ok"


async def test_the_kernel_is_ipykernels(channel):
    code = (
        "ip = get_ipython()\n"
        "print(type(ip).__name__, 'IPKernelApp' in ip.config, "
        "type(ip.kernel).__mro__[1].__name__)"
    )
    events, reply = await channel.execute(code)
    assert reply["content"]["status"] == "ok"
    text = "".join(e["content"]["text"] for e in events if e["event"] == "stream")
    assert text.split() == ["ZMQInteractiveShell", "True", "IPythonKernel"]

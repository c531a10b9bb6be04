"""input()/getpass() over the channel, and interrupts (without and with a bubblewrap prefix)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kcr_runner
import pytest

from .conftest import stream_text


async def test_input_round_trip(channel):
    id = await channel.send("execute", {"code": "name = input('who? ')\nname", "allow_stdin": True})
    request = await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "input_request")
    assert request["content"] == {"prompt": "who? ", "password": False}
    await channel.send("input_reply", {"value": "ada"}, id=id)
    reply = await channel.reply(id)
    assert reply["content"]["status"] == "ok"
    result = [f for f in channel.frames[id] if f["event"] == "execute_result"]
    assert result[0]["content"]["data"]["text/plain"] == "'ada'"


async def test_getpass_is_a_password_request(channel):
    code = "import getpass\nsecret = getpass.getpass()\nlen(secret)"
    id = await channel.send("execute", {"code": code, "allow_stdin": True})
    request = await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "input_request")
    assert request["content"]["password"] is True
    await channel.send("input_reply", {"value": "hunter2"}, id=id)
    await channel.reply(id)
    result = [f for f in channel.frames[id] if f["event"] == "execute_result"]
    assert result[0]["content"]["data"]["text/plain"] == "7"


async def test_input_without_allow_stdin_raises_clearly(channel):
    _events, reply = await channel.execute("input('x')", allow_stdin=False)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "StdinNotImplementedError"
    # ipykernel's own wording: the client sent allow_stdin=false.
    assert "does not support input requests" in reply["content"]["evalue"]


async def test_input_reply_without_pending_execute_is_a_protocol_error(channel):
    await channel.send("input_reply", {"value": "x"}, id="nothing-runs")
    frame = await channel.wait_for(lambda f: f.get("id") == "nothing-runs")
    assert frame["event"] == "protocol_error"


async def _interrupt_case(runner, channel, code: str):
    await channel.execute("survivor = 'still here'")
    id = await channel.send("execute", {"code": f"print('started', flush=True)\n{code}"})
    await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "stream")
    response = await runner.http("POST", "/interrupt")
    assert response.code == 204
    reply = await channel.reply(id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    events, after = await channel.execute("print(survivor)")
    assert after["content"]["status"] == "ok"
    assert stream_text(events) == "still here\n"


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(100)"])
async def test_interrupt_busy_loop_and_sleep(shared_runner, channel, code):
    await _interrupt_case(shared_runner, channel, code)


async def test_interrupt_while_waiting_for_input(shared_runner, channel):
    id = await channel.send("execute", {"code": "input()", "allow_stdin": True})
    await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "input_request")
    await shared_runner.http("POST", "/interrupt")
    reply = await channel.reply(id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"


def _bwrap_works() -> bool:
    if not shutil.which("bwrap"):
        return False
    probe = subprocess.run([*BWRAP_PREFIX, "true"], capture_output=True)
    return probe.returncode == 0


BWRAP_PREFIX = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/",
    "/",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    # The checkout may itself live under /tmp (CI clones): keep the runner's source visible.
    "--ro-bind",
    str(Path(kcr_runner.__file__).resolve().parents[1]),
    str(Path(kcr_runner.__file__).resolve().parents[1]),
    "--",
]


@pytest.mark.bwrap
async def test_interrupt_and_output_through_a_bubblewrap_prefix(start_runner):
    if not _bwrap_works():
        pytest.skip("bubblewrap cannot create namespaces here")
    runner = start_runner("--worker-prefix", json.dumps(BWRAP_PREFIX))
    channel = await runner.channel()
    try:
        _events, reply = await channel.execute("import os\nos.getpid()")
        assert reply["content"]["status"] == "ok"
        for code in ["while True:\n    pass", "import time\ntime.sleep(100)"]:
            await _interrupt_case(runner, channel, code)
    finally:
        await channel.close()

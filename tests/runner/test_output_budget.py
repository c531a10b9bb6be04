"""The runner's per-cell output budget: every output type counts, one notice, then nothing.

A real runner with a real (unsandboxed) Python worker, and a bash worker when bash exists:
the budget lives in the runner, so it is the same for every language.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import RunnerProcess, stream_text

BYTES = 5000
MESSAGES = 50
NOTICE = "[kcr] Output limit reached"
OUTPUTS = {"stream", "display_data", "update_display_data", "execute_result", "error"}


@pytest.fixture(scope="module")
def budget_runner(tmp_path_factory):
    runner = RunnerProcess(
        tmp_path_factory.mktemp("budget"),
        "--max-output-bytes",
        str(BYTES),
        "--max-output-messages",
        str(MESSAGES),
    )
    yield runner
    runner.stop()


@pytest.fixture
async def channel(budget_runner):
    ch = await budget_runner.channel()
    yield ch
    await ch.close()


def notices(events) -> int:
    return stream_text(events, "stderr").count(NOTICE)


def after_notice(events) -> list[dict]:
    """The events that came after the notice."""
    for i, e in enumerate(events):
        if e["event"] == "stream" and NOTICE in e["content"]["text"]:
            return events[i + 1 :]
    raise AssertionError("no notice")


def shown_bytes(events) -> int:
    import json

    return sum(len(json.dumps(e["content"])) for e in events if e["event"] in OUTPUTS)


# One cell per output type, each producing far more than the budget of that type alone.
CELLS = {
    "stream": "for i in range(2000):\n    print('x' * 20)",
    "display_data": "for i in range(200):\n    display({'text/plain': 'y' * 100}, raw=True)",
    "update_display_data": (
        "h = display('start', display_id=True)\nfor i in range(200):\n    h.update('z' * 100)"
    ),
    "execute_result": "'r' * 20000",
    "error": "raise ValueError('e' * 20000)",
    "clear_output": (
        "from IPython.display import clear_output\nfor i in range(200):\n    clear_output()"
    ),
}


@pytest.mark.parametrize("kind", sorted(CELLS))
async def test_every_output_type_counts_toward_one_budget(channel, kind):
    events, reply = await channel.execute(CELLS[kind])
    assert reply["event"] == "reply" and reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == ("error" if kind == "error" else "ok")
    assert notices(events) == 1, [e["event"] for e in events]
    limit = "50 messages" if kind == "clear_output" else "5000 bytes"
    assert f"({limit} per cell): further output of this cell is not shown." in stream_text(
        events, "stderr"
    )
    assert not [e for e in after_notice(events) if e["event"] in OUTPUTS | {"clear_output"}]
    assert shown_bytes(events) <= BYTES + 200  # + the notice itself
    if kind in ("execute_result", "error"):  # one event over the budget: not shown at all
        assert not [e for e in events if e["event"] == kind]
    else:
        assert [e for e in events if e["event"] == kind]


async def test_stream_is_cut_to_fit_and_output_types_share_the_budget(channel):
    code = (
        "display({'text/plain': 'd' * 3000}, raw=True)\n"
        "for i in range(300):\n    print('x' * 20)\n"
        "display({'text/plain': 'after'}, raw=True)"
    )
    events, reply = await channel.execute(code)
    assert reply["content"]["status"] == "ok"
    assert notices(events) == 1
    out = stream_text(events)
    assert 1500 < len(out) < 2000  # what the display left of the 5000 bytes
    assert "after" not in str(after_notice(events))


async def test_message_limit_stops_a_flood_of_tiny_messages(channel):
    events, reply = await channel.execute("for i in range(5000):\n    display(i)")
    assert reply["content"]["status"] == "ok"
    assert len([e for e in events if e["event"] == "display_data"]) == MESSAGES
    assert notices(events) == 1
    assert "(50 messages per cell)" in stream_text(events, "stderr")


async def test_the_budget_is_per_cell_and_input_is_never_dropped(channel):
    code = "for i in range(500):\n    display(i)\nname = input('name? ')\nprint(name)"
    request_id = await channel.send("execute", {"code": code, "allow_stdin": True})
    asked = await channel.wait_for(
        lambda f: f.get("id") == request_id and f.get("event") == "input_request"
    )
    assert asked["content"]["prompt"] == "name? "  # not output: asked after the budget is spent
    await channel.send("input_reply", {"value": "ada"}, id=request_id)
    reply = await channel.reply(request_id)
    assert reply["content"]["status"] == "ok"
    events = channel.frames[request_id]
    assert notices(events) == 1
    assert "ada" not in stream_text(events)
    events, _ = await channel.execute("print('fresh cell')")
    assert stream_text(events) == "fresh cell\n"
    assert notices(events) == 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
async def test_a_bash_kernel_has_the_same_budget(tmp_path):
    runner = RunnerProcess(tmp_path, "--language", "bash", "--max-output-bytes", str(BYTES))
    try:
        channel = await runner.channel()
        events, reply = await channel.execute(
            "for i in $(seq 1 3000); do echo xxxxxxxxxxxxxxxxxxxx; done"
        )
        assert reply["content"]["status"] == "ok"
        assert notices(events) == 1
        assert "(5000 bytes per cell)" in stream_text(events, "stderr")
        assert 4000 < len(stream_text(events)) <= BYTES
        events, _ = await channel.execute("echo fresh")
        assert stream_text(events) == "fresh\n"
        await channel.close()
    finally:
        runner.stop()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_slow_channel_does_not_fill_the_runners_memory(tmp_path):
    """200 MB of output (no budget) to a client that does not read for a while: the runner
    stops reading the worker's pipe instead of queueing the output, so its memory stays flat;
    once the client reads, everything arrives.

    What waits meanwhile waits inside the pod, under the kernel's memory cap: the Python
    worker's kernel publishes on ipykernel's own ZMQ iopub socket, so up to ZMQ's high-water
    marks of output queue there before the kernel itself is held back.
    """
    import asyncio

    runner = RunnerProcess(tmp_path, "--max-output-bytes", "0", "--max-output-messages", "0")
    try:
        channel = await runner.channel()
        await channel.execute("x = 'y' * 1_000_000")
        before = _rss(runner.ready["pid"])
        code = "for i in range(200):\n    display({'text/plain': x}, raw=True)"
        request_id = await channel.send("execute", {"code": code})
        await asyncio.sleep(3)  # a client that does not read (the assertions are not on time)
        stalled_rss = _rss(runner.ready["pid"])
        shown = 0
        while True:
            frame = await channel.next_frame(timeout=60)
            if frame.get("id") == request_id and frame.get("event") == "reply":
                break
            shown += frame.get("event") == "display_data"
        assert frame["content"]["status"] == "ok"
        assert shown == 200  # nothing lost
        # 200 MB pass through; what the runner holds meanwhile is its read-ahead and send
        # buffer (a few MiB) plus allocator slack, far below the output.
        assert stalled_rss - before < 64 * 1024 * 1024, (before, stalled_rss)
        await channel.close()
    finally:
        runner.stop()


async def test_worker_lines_longer_than_the_read_ahead_are_read_whole():
    import asyncio

    from kcr_runner.worker_process import read_line

    stream = asyncio.StreamReader(limit=16)
    stream.feed_data(b"a" * 100 + b"\nshort\n" + b"tail")
    stream.feed_eof()
    assert await read_line(stream, 1000) == b"a" * 100 + b"\n"
    assert await read_line(stream, 1000) == b"short\n"
    assert await read_line(stream, 1000) == b"tail"
    assert await read_line(stream, 1000) == b""
    too_long = asyncio.StreamReader(limit=16)
    too_long.feed_data(b"b" * 60 + b"\n")
    with pytest.raises(ValueError):  # the runner then stops the worker: a protocol violation
        await read_line(too_long, 50)


async def test_output_between_cells_has_a_budget_too(budget_runner, channel):
    code = (
        "import os, threading, time\n"
        "def chatter():\n"
        "    while not os.path.exists('go'):\n"
        "        time.sleep(0.01)\n"
        "    for i in range(2000):\n"
        "        print('b' * 20)\n"
        "threading.Thread(target=chatter, daemon=True).start()"
    )
    _, reply = await channel.execute(code)
    assert reply["content"]["status"] == "ok"
    (budget_runner.workspace / "go").write_text("")  # the cell is over: output has no id
    notice = await channel.wait_for(
        lambda f: f.get("id") is None and NOTICE in f.get("content", {}).get("text", "")
    )
    assert "(5000 bytes per cell)" in notice["content"]["text"]
    unsolicited = channel.frames[None]
    # ipykernel flushes thread output in small messages: their JSON framing counts too.
    assert 2000 < len(stream_text(unsolicited)) <= BYTES
    events, _ = await channel.execute("print('next')")  # a new cell renews that budget too
    assert stream_text(events) == "next\n"

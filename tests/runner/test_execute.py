"""Execution over /channel against a real runner: results, streams, rich output, IPython ops."""

from __future__ import annotations

import asyncio

from .conftest import stream_text


async def test_execute_result_has_execution_count_and_execute_input_comes_first(channel):
    events, reply = await channel.execute("40 + 2")
    assert events[0]["event"] == "execute_input"
    count = events[0]["content"]["execution_count"]
    assert events[0]["content"]["code"] == "40 + 2"
    results = [e for e in events if e["event"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "42"
    assert results[0]["content"]["execution_count"] == count
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["execution_count"] == count
    _, second = await channel.execute("1")
    assert second["content"]["execution_count"] == count + 1


async def test_a_request_is_acknowledged_before_any_of_its_events(channel):
    # The gateway re-sends to a new pod only requests its lost pod never acknowledged.
    request_id = await channel.send("execute", {"code": "print('x')"})
    await channel.reply(request_id)
    events = [f["event"] for f in channel.frames[request_id]]
    assert events[0] == "ack" and events.count("ack") == 1
    assert events[-1] == "reply"


async def test_stream_reaches_client_while_the_cell_still_runs(channel, shared_runner):
    flag = shared_runner.workspace / "release-stream"
    code = (
        "import os, time\n"
        "print('first', flush=True)\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.02)\n"
        "print('second')\n"
    )
    id = await channel.send("execute", {"code": code})
    first = await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "stream")
    assert first["content"]["text"] == "first\n"
    assert not any(f["event"] == "reply" for f in channel.frames[id])  # still running
    flag.write_text("go")
    reply = await channel.reply(id)
    assert reply["content"]["status"] == "ok"
    assert "second\n" in stream_text(channel.frames[id])


async def test_100k_lines_arrive_complete_in_few_frames(channel):
    events, reply = await channel.execute("for i in range(100_000):\n    print(i)", timeout=60)
    assert reply["content"]["status"] == "ok"
    text = stream_text(events)
    assert text == "".join(f"{i}\n" for i in range(100_000))
    assert len([e for e in events if e["event"] == "stream"]) < 500


async def test_subprocess_and_c_level_output_is_captured(channel):
    events, _ = await channel.execute("import os\nos.system('echo from-a-shell; echo err >&2')")
    assert "from-a-shell\n" in stream_text(events)
    assert "err\n" in stream_text(events, "stderr")


async def test_error_reply_and_event_carry_ename_evalue_traceback(channel):
    events, reply = await channel.execute("1/0")
    errors = [e for e in events if e["event"] == "error"]
    assert errors[0]["content"]["ename"] == "ZeroDivisionError"
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert reply["content"]["evalue"] == "division by zero"
    assert any("ZeroDivisionError" in line for line in reply["content"]["traceback"])


async def test_display_update_and_clear_output(channel):
    code = (
        "from IPython.display import display, clear_output, HTML\n"
        "h = display('one', display_id='d1')\n"
        "h.update('two')\n"
        "display(HTML('<b>x</b>'))\n"
        "clear_output(wait=True)\n"
    )
    events, reply = await channel.execute(code)
    assert reply["content"]["status"] == "ok"
    kinds = [e["event"] for e in events]
    assert kinds[1:] == ["display_data", "update_display_data", "display_data", "clear_output"]
    assert events[1]["content"]["transient"] == {"display_id": "d1"}
    assert events[2]["content"]["data"]["text/plain"] == "'two'"
    assert events[3]["content"]["data"]["text/html"] == "<b>x</b>"
    assert events[4]["content"] == {"wait": True}


async def test_matplotlib_figure_is_sent_as_png(channel):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    events, reply = await channel.execute(code, timeout=60)
    assert reply["content"]["status"] == "ok"
    images = [e for e in events if e["event"] == "display_data"]
    assert images and "image/png" in images[0]["content"]["data"]


async def test_user_expressions_silent_and_store_history(channel):
    _, reply = await channel.execute("zz = 5", user_expressions={"a": "zz * 2", "b": "nope"})
    expressions = reply["content"]["user_expressions"]
    assert expressions["a"]["status"] == "ok"
    assert expressions["a"]["data"]["text/plain"] == "10"
    assert expressions["b"]["status"] == "error"
    _, before = await channel.execute("1")
    count = before["content"]["execution_count"]
    events, _silent = await channel.execute("zz + 1", silent=True)
    assert not [e for e in events if e["event"] == "execute_result"]
    _, _nohist = await channel.execute("2", store_history=False)
    _, after = await channel.execute("3")
    assert after["content"]["execution_count"] == count + 1  # neither silent nor no-history


async def test_magics_work(channel):
    events, reply = await channel.execute("%time x_magic = sum(range(10))\nx_magic")
    assert reply["content"]["status"] == "ok"
    assert (
        next(e for e in events if e["event"] == "execute_result")["content"]["data"]["text/plain"]
        == "45"
    )


async def test_complete_inspect_is_complete_history(channel):
    await channel.execute("import os\nmy_variable_name = 1")
    _, complete = await channel.request("complete", {"code": "my_var", "cursor_pos": 6})
    assert complete["msg_type"] == "complete_reply"
    assert "my_variable_name" in complete["content"]["matches"]
    assert complete["content"]["cursor_start"] == 0
    _, inspect = await channel.request("inspect", {"code": "os.path.join", "cursor_pos": 12})
    assert inspect["msg_type"] == "inspect_reply"
    assert inspect["content"]["found"] is True
    assert "text/plain" in inspect["content"]["data"]
    _, incomplete = await channel.request("is_complete", {"code": "for i in range(3):"})
    assert incomplete["content"] == {"status": "incomplete", "indent": "    "}
    _, complete_code = await channel.request("is_complete", {"code": "x = 1"})
    assert complete_code["content"]["status"] == "complete"
    _, history = await channel.request("history", {"hist_access_type": "tail", "n": 5})
    assert history["msg_type"] == "history_reply"
    assert any("my_variable_name" in entry[2] for entry in history["content"]["history"])


async def test_comms_reach_ipykernels_comm_manager_both_ways(channel):
    """A comm target registered in the kernel gets the client's comm_open and comm_msg; its
    messages back are events of the request that caused them."""
    setup = (
        "received = []\n"
        "def target(comm, open_msg):\n"
        "    received.append(open_msg['content']['data'])\n"
        "    @comm.on_msg\n"
        "    def _(msg):\n"
        "        received.append(msg['content']['data'])\n"
        "        comm.send({'echo': msg['content']['data']})\n"
        "get_ipython().kernel.comm_manager.register_target('kcr-test', target)\n"
    )
    _, reply = await channel.execute(setup)
    assert reply["content"]["status"] == "ok"
    _, opened = await channel.request(
        "comm_open", {"comm_id": "c1", "target_name": "kcr-test", "data": {"hello": 1}}
    )
    assert opened["msg_type"] == "comm_reply" and opened["content"]["status"] == "ok"
    events, _ = await channel.request("comm_msg", {"comm_id": "c1", "data": {"x": 2}})
    echoes = [e for e in events if e["event"] == "comm_msg"]
    assert echoes and echoes[0]["content"]["data"] == {"echo": {"x": 2}}
    assert echoes[0]["content"]["comm_id"] == "c1"
    _, info = await channel.request("comm_info", {})
    assert info["content"]["comms"] == {"c1": {"target_name": "kcr-test"}}
    events, _ = await channel.execute("received")
    result = next(e for e in events if e["event"] == "execute_result")
    assert result["content"]["data"]["text/plain"] == "[{'hello': 1}, {'x': 2}]"


async def test_comm_messages_for_unknown_comms_and_targets_do_not_wedge(channel):
    await channel.request("comm_msg", {"comm_id": "no-such-comm", "data": {}})
    await channel.request("comm_close", {"comm_id": "no-such-comm", "data": {}})
    events, _ = await channel.request("comm_open", {"comm_id": "c2", "target_name": "nope"})
    # ipykernel answers an unknown target by closing the comm again (and logs why)
    assert "comm_close" in [e["event"] for e in events]
    _, ok = await channel.execute("1 + 1")
    assert ok["content"]["status"] == "ok"


async def test_requests_run_in_arrival_order(channel):
    ids = [await channel.send("execute", {"code": f"print({i})"}) for i in range(5)]
    replies = [await channel.reply(id) for id in ids]
    counts = [r["content"]["execution_count"] for r in replies]
    assert counts == sorted(counts) and len(set(counts)) == 5


async def test_kernel_info_over_http_and_channel(shared_runner, channel):
    response = await shared_runner.http("GET", "/kernel_info")
    import json

    info = json.loads(response.body)
    assert info["language_info"]["name"] == "python"
    assert info["language_info"]["file_extension"] == ".py"
    _, reply = await channel.request("kernel_info")
    assert reply["msg_type"] == "kernel_info_reply"
    assert reply["content"]["language_info"]["name"] == "python"


async def test_events_from_two_channels_stay_separate(shared_runner):
    a, b = await shared_runner.channel(), await shared_runner.channel()
    try:
        ra, rb = await asyncio.gather(a.execute("print('A')"), b.execute("print('B')"))
        assert stream_text(ra[0]) == "A\n" and stream_text(rb[0]) == "B\n"
    finally:
        await a.close()
        await b.close()


async def test_exit_and_help_become_payloads(channel):
    _, reply = await channel.execute("exit()")
    assert reply["content"]["payload"] == [{"source": "ask_exit", "keepkernel": False}]
    _, reply = await channel.execute("len?")
    page = reply["content"]["payload"][0]
    assert page["source"] == "page" and "text/plain" in page["data"]
    _, reply = await channel.execute("1")
    assert reply["content"]["status"] == "ok"  # the worker is still there


async def test_output_between_cells_has_a_null_id(channel, shared_runner):
    flag = shared_runner.workspace / "release-late"
    code = (
        "import os, threading, time\n"
        "def late():\n"
        f"    while not os.path.exists({str(flag)!r}):\n"
        "        time.sleep(0.02)\n"
        "    print('late')\n"
        "threading.Thread(target=late).start()"
    )
    _, reply = await channel.execute(code)
    assert reply["content"]["status"] == "ok"
    flag.write_text("go")  # the thread prints only once its cell is over
    late = await channel.wait_for(lambda f: f.get("id") is None)
    assert late["event"] == "stream" and late["content"]["text"] == "late\n"

"""Limits (output cap, cell timeout, request size) and malformed input on /channel."""

from __future__ import annotations

import json

import pytest
import websockets

from .conftest import stream_text


@pytest.fixture(scope="module")
def limited_runner(tmp_path_factory):
    from .conftest import RunnerProcess

    runner = RunnerProcess(
        tmp_path_factory.mktemp("limited"),
        "--max-output-bytes",
        "5000",
        "--cell-timeout",
        "3",
        "--max-request-bytes",
        "20000",
        "--max-state-bytes",
        "20000",
    )
    yield runner
    runner.stop()


async def test_output_cap_sends_one_notice_and_drops_the_rest(limited_runner):
    channel = await limited_runner.channel()
    try:
        events, reply = await channel.execute("for i in range(2000):\n    print('x' * 20)")
        assert reply["content"]["status"] == "ok"
        out = stream_text(events)
        assert 4000 < len(out) <= 5000  # the runner counts the events' JSON, not just text
        notices = stream_text(events, "stderr")
        assert notices.count("[kcr] Output limit reached (5000 bytes per cell)") == 1
        events, _ = await channel.execute("print('fresh cell')")
        assert stream_text(events) == "fresh cell\n"  # the cap is per cell
    finally:
        await channel.close()


async def test_cell_timeout_interrupts_with_a_clear_error(limited_runner):
    channel = await limited_runner.channel()
    try:
        await channel.execute("kept = 1")
        _, reply = await channel.execute("import time\ntime.sleep(60)")
        assert reply["content"]["ename"] == "TimeoutError"
        assert "3.0 s" in reply["content"]["evalue"]
        events, _ok = await channel.execute("print(kept)")
        assert stream_text(events) == "1\n"
    finally:
        await channel.close()


async def test_request_body_over_the_limit_is_413(limited_runner):
    response = await limited_runner.http("POST", "/state/restore", body=b"x" * 30000)
    assert response.code == 413
    assert json.loads(response.body)["reason"] == "request_too_large"
    assert (await limited_runner.http("GET", "/healthz")).code == 200


async def test_file_uploads_stream_to_disk_past_the_in_memory_limit(limited_runner):
    payload = bytes(range(256)) * 20_000  # 5 MB, 250x --max-request-bytes
    response = await limited_runner.http("PUT", "/files/big/blob.bin", body=payload)
    assert response.code == 204
    assert (limited_runner.workspace / "big" / "blob.bin").read_bytes() == payload
    assert not [p for p in (limited_runner.workspace / "big").iterdir() if p.name != "blob.bin"]
    back = await limited_runner.http("GET", "/files/big/blob.bin")
    assert back.code == 200 and back.body == payload


async def test_huge_code_frame_closes_with_message_too_big(limited_runner):
    channel = await limited_runner.channel()
    await channel.send("execute", {"code": "x = '" + "a" * 50000 + "'"})
    with pytest.raises(websockets.ConnectionClosed) as info:
        await channel.next_frame()
    assert info.value.rcvd.code == 1009
    channel = await limited_runner.channel()
    try:
        _, reply = await channel.execute("1 + 1")
        assert reply["content"]["status"] == "ok"
    finally:
        await channel.close()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        (json.dumps({"op": "execute", "content": {"code": "1"}}), "missing_id"),
        (json.dumps({"id": "u1", "op": "launch_rockets"}), "unknown_op"),
        (json.dumps({"id": "u2", "op": "execute", "content": "code"}), "bad_content"),
        (json.dumps({"id": "u3", "op": "execute", "content": {"code": 5}}), "bad_content"),
    ],
)
async def test_malformed_frames_get_a_protocol_error(channel, frame, reason):
    await channel.ws.send(frame)
    error = await channel.wait_for(lambda f: f["event"] == "protocol_error")
    assert error["content"]["reason"] == reason
    assert error["content"]["message"]
    _, reply = await channel.execute("'still alive'")
    assert reply["content"]["status"] == "ok"


async def test_binary_frame_gets_a_protocol_error(channel):
    await channel.ws.send(b"\x00\x01binary")
    error = await channel.wait_for(lambda f: f["event"] == "protocol_error")
    assert error["id"] is None
    assert error["content"]["reason"] == "binary_frame"
    _, reply = await channel.execute("1")
    assert reply["content"]["status"] == "ok"

"""WebSocket fuzzing against a real gateway: bad frames and messages are refused, nothing wedges.

After every batch the fuzzed kernel and a control kernel must still answer ``1+1``.
The gateway runs in this process, so its RSS is this process's VmRSS.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import pytest
import pytest_asyncio
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from kcr_gateway.app import KCRGateway
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect
from traitlets.config import Config

from tests.gateway.conftest import Reply, WSKernelClient, http, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

V1 = "v1.kernel.websocket.jupyter.org"
MAX_MESSAGE = 64 * 1024
PER_KERNEL = 8
RATE, BURST = 50, 400  # a slow (loaded) gateway must still exceed RATE
MAX_QUEUED = 50


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory):
    """A gateway with small incoming limits, so that each one is quick to reach."""
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(tmp_path_factory.mktemp("gw") / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 2}}
    config.KCRGateway.websocket_max_message_size = MAX_MESSAGE
    config.KCRWebsocketConnection.max_connections_per_kernel = PER_KERNEL
    config.KCRWebsocketConnection.max_frames_per_second = RATE
    config.KCRWebsocketConnection.frame_burst = BURST
    config.KCRWebsocketConnection.max_queued_requests = MAX_QUEUED
    app = KCRGateway(config=config)
    await app.start_async()
    await app.pool.wait_warm(60)
    yield app
    await app.stop_async()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def kernels(gateway):
    """(fuzzed kernel id, control client) for the whole module."""
    base = f"http://127.0.0.1:{gateway.port}"
    fuzzed = await start_kernel(base)
    control = await WSKernelClient.connect(base, await start_kernel(base))
    yield fuzzed, control
    control.close()


@pytest.fixture
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def assert_alive(base: str, kernel_id: str, control: WSKernelClient) -> None:
    """The fuzzed kernel (on a fresh socket) and the control kernel both answer 1+1."""
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        for c in (client, control):
            r = await c.execute("1+1", timeout=30)
            assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
    finally:
        client.close()
    assert (await http(base, "GET", "/api")).code == 200


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def good(msg_type: str = "execute_request", content: dict | None = None) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": "fuzz",
            "username": "fuzz",
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": "1+1"} if content is None else content,
        "channel": "shell",
    }


async def send_batch(base, kernel_id, msgs: list[dict]) -> dict[str, Reply]:
    """Send ``msgs`` as legacy JSON frames on one socket, then one good request.

    Error replies are sent while a frame is handled, so once the good request
    is answered, every reply the batch will ever get is in. Returns replies by msg_id.
    """
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        entries = {}
        for m in msgs:
            header = m.get("header") if isinstance(m, dict) else None
            msg_id = header.get("msg_id") if isinstance(header, dict) else None
            if isinstance(msg_id, str):
                entries[msg_id] = client.pending.setdefault(msg_id, Reply())
            await client.ws.write_message(json.dumps(m))
        r = await client.execute("1+1", timeout=30)
        assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
        assert not client.closed.is_set()
        return entries
    finally:
        client.close()


def assert_bad_message(entry: Reply, field: str, reply_type: str) -> None:
    assert entry.reply is not None, f"no reply for a bad {field}"
    assert entry.reply["msg_type"] == reply_type
    content = entry.reply["content"]
    assert content["status"] == "error" and content["ename"] == "BadMessage", content
    assert field in content["evalue"], content


BAD_VALUES = [0, 1.5, True, [], {}, None, ["execute_request"]]


async def test_wrong_types_in_every_header_field(base, kernels):
    kernel_id, control = kernels
    cases = []
    for field in ("msg_id", "msg_type", "session", "username", "version", "date"):
        for value in [*BAD_VALUES, "missing"]:
            if value is None and field == "date":
                continue  # a null date is allowed
            if value == "missing" and field in ("username", "version", "date"):
                continue  # optional
            m = good()
            if value == "missing":
                del m["header"][field]
            else:
                m["header"][field] = value
            cases.append((field, m))
    replies = await send_batch(base, kernel_id, [m for _, m in cases])
    for field, m in cases:
        msg_id = m["header"].get("msg_id")
        if field == "msg_id":
            continue  # no reply can be addressed: dropped
        reply_type = "execute_reply" if field != "msg_type" else "error_reply"
        assert_bad_message(replies[msg_id], f"header.{field}", reply_type)
    await assert_alive(base, kernel_id, control)


CONTENT_CASES = {
    "execute_request": (
        {"code": "1"},
        ["code", "silent", "store_history", "allow_stdin", "stop_on_error", "user_expressions"],
        ["code"],
    ),
    "complete_request": ({"code": "pri", "cursor_pos": 3}, ["code", "cursor_pos"], ["code"]),
    "inspect_request": (
        {"code": "print", "cursor_pos": 5},
        ["code", "cursor_pos", "detail_level"],
        ["cursor_pos"],
    ),
    "is_complete_request": ({"code": "1"}, ["code"], ["code"]),
    "history_request": (
        {"hist_access_type": "tail", "n": 1},
        ["output", "raw", "hist_access_type", "n", "start", "stop", "session", "pattern"],
        [],
    ),
    "shutdown_request": ({"restart": False}, ["restart"], []),
    "comm_info_request": ({}, ["target_name"], []),
}


async def test_wrong_types_and_missing_fields_in_every_content_field(base, kernels):
    kernel_id, control = kernels
    cases = []
    for msg_type, (valid, fields, needed) in CONTENT_CASES.items():
        for field in fields:
            for value in (None, 7, "x", True, [1], {"a": 1}):
                m = good(msg_type, {**valid, field: value})
                # a value of the right type is not a case ('x' for code, True for silent...)
                rule = m["content"][field]
                ok = {
                    "code": str,
                    "hist_access_type": str,
                    "pattern": str,
                    "target_name": str,
                }.get(field)
                if ok is str and isinstance(rule, str):
                    continue
                if field in (
                    "silent",
                    "store_history",
                    "allow_stdin",
                    "stop_on_error",
                    "output",
                    "raw",
                    "restart",
                ) and isinstance(rule, bool):
                    continue
                if field in ("cursor_pos", "detail_level", "n", "start", "stop", "session") and (
                    isinstance(rule, int) and not isinstance(rule, bool)
                ):
                    continue
                cases.append((msg_type, field, m))
        for field in needed:
            m = good(msg_type, {k: v for k, v in valid.items() if k != field})
            cases.append((msg_type, field, m))
    # requests for kcr's comm and stdin messages: never answered, must not wedge anything
    quiet = [
        good("comm_open", {"comm_id": 1, "target_name": "t"}),
        good("comm_msg", {"comm_id": "c", "data": []}),
        good("comm_close", {}),
        good("debug_request", {"seq": "one", "command": 3}),
        {**good("input_reply", {"value": 5}), "channel": "stdin"},
    ]
    replies = await send_batch(base, kernel_id, [m for *_, m in cases] + quiet)
    for msg_type, field, m in cases:
        reply_type = msg_type.replace("_request", "_reply")
        assert_bad_message(replies[m["header"]["msg_id"]], f"content.{field}", reply_type)
    for m in quiet[:3] + quiet[4:]:
        assert replies[m["header"]["msg_id"]].reply is None
    debug = replies[quiet[3]["header"]["msg_id"]]
    assert_bad_message(debug, "content.seq", "debug_reply")
    await assert_alive(base, kernel_id, control)


async def test_unknown_channels_and_parts_that_are_not_objects(base, kernels):
    kernel_id, control = kernels
    channels = [{**good(), "channel": c} for c in ("iopub", "heartbeat", "", 5, ["shell"])]
    parts = []
    for part in ("parent_header", "metadata", "content"):
        for value in ("x", 5, [1]):
            parts.append((part, {**good(), part: value}))
    dropped = [
        [],
        5,
        "a string",
        {"no": "header"},
        {"header": "x", "content": {}},
        {"header": [1], "content": {}},
        {"header": {"msg_id": "", "msg_type": "execute_request", "session": "s"}},
    ]
    replies = await send_batch(base, kernel_id, channels + [m for _, m in parts] + dropped)
    for m in channels:
        assert_bad_message(replies[m["header"]["msg_id"]], "channel", "execute_reply")
        assert replies[m["header"]["msg_id"]].reply["channel"] == "shell"
    for part, m in parts:
        assert_bad_message(replies[m["header"]["msg_id"]], part, "execute_reply")
    await assert_alive(base, kernel_id, control)


async def test_frames_for_other_kernels_run_nowhere(base, kernels):
    """A socket reaches only the kernel in its URL; a message naming another kernel is refused.

    Nothing in a Jupyter message selects a kernel, so 'a frame for another kernel' can only
    be a frame that says so (a kernel_id field, as some multiplexing clients send): it is
    refused rather than run on this kernel, and it never reaches the kernel it names.
    """
    kernel_id, control = kernels
    other = control.kernel_id
    code = {"code": "ran_here = 1"}
    top = {**good(content=code), "kernel_id": other}
    in_header = good(content=code)
    in_header["header"]["kernel_id"] = other
    # a parent_header from another kernel's messages is just information
    with_parent = good(content={"code": "parent_ok = 1"})
    with_parent["parent_header"] = {"msg_id": "x", "session": "another-kernel's"}
    same = {**good(content={"code": "same_ok = 1"}), "kernel_id": kernel_id}
    replies = await send_batch(base, kernel_id, [top, in_header, with_parent, same])
    assert_bad_message(replies[top["header"]["msg_id"]], "kernel_id", "execute_reply")
    assert_bad_message(replies[in_header["header"]["msg_id"]], "header.kernel_id", "execute_reply")
    for ok in (with_parent, same):
        assert replies[ok["header"]["msg_id"]].reply["content"]["status"] == "ok"
    for client_kernel in (kernel_id, other):
        client = await WSKernelClient.connect(base, client_kernel)
        try:
            r = await client.execute("'ran_here' in globals()")
            assert r.outputs("execute_result")[0]["data"]["text/plain"] == "False"
        finally:
            client.close()
    await assert_alive(base, kernel_id, control)


# -- frames (close codes) ----------------------------------------------------------------


async def open_ws(base: str, kernel_id: str, v1: bool):
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url), subprotocols=[V1] if v1 else None)
    assert (ws.selected_subprotocol == V1) is v1
    return ws


async def closed_with(ws) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    while await asyncio.wait_for(ws.read_message(), 30) is not None:
        pass
    return ws.close_code, ws.close_reason


def v1_frame(msg: dict, channel: str = "shell") -> bytes:
    parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata")]
    return serialize_msg_to_ws_v1([*parts, json.dumps(msg["content"]).encode()], channel)


def legacy_binary(nbufs: int, offsets: list[int], tail: bytes) -> bytes:
    return struct.pack(f"!i{len(offsets)}I", nbufs, *offsets) + tail


def v1_raw(count: int, offsets: list[int], tail: bytes = b"") -> bytes:
    return struct.pack(f"<Q{len(offsets)}Q", count, *offsets) + tail


JSON_PART = json.dumps(good()).encode()


def bad_v1_frames() -> dict[str, tuple[bytes | str, int]]:
    valid = v1_frame(good())
    n = 6
    table = 8 + 8 * n
    ok_offsets = list(struct.unpack_from(f"<{n}Q", valid, 8))
    return {
        "json text frame": (json.dumps(good()), 1003),
        "count 2^63 in 16 bytes": (v1_raw(2**63, [0]), 1007),
        "count from '{\"header'": (b'{"header": {}}', 1007),
        "count 2^24": (v1_raw(2**24, [0] * 8), 1007),
        "count below 6": (v1_raw(2, [24, 24]), 1007),
        "more offsets than buffers allowed": (v1_raw(200, [1608] * 200, b"x"), 1007),
        "too short for a count": (b"\x01\x00", 1007),
        "decreasing offsets": (
            valid[:8]
            + struct.pack(f"<{n}Q", *ok_offsets[:3], ok_offsets[2] - 1, *ok_offsets[4:])
            + valid[table:],
            1007,
        ),
        "offset past the end": (
            valid[:8] + struct.pack(f"<{n}Q", *ok_offsets[:-1], len(valid) + 1) + valid[table:],
            1007,
        ),
        "offset inside the table": (
            valid[:8] + struct.pack(f"<{n}Q", 8, *ok_offsets[1:]) + valid[table:],
            1007,
        ),
        "part that is not JSON": (
            serialize_msg_to_ws_v1([b"{", b"{}", b"{}", b"{}"], "shell"),
            1007,
        ),
        "channel not UTF-8": (
            serialize_msg_to_ws_v1([b"{}"] * 4, "abcde").replace(b"abcde", b"\xff" * 5),
            1007,
        ),
    }


def bad_legacy_frames() -> dict[str, tuple[bytes | str, int]]:
    return {
        "count 2^31-1": (legacy_binary(2**31 - 1, [8], JSON_PART), 1007),
        "count 2^24": (legacy_binary(2**24, [0] * 8, JSON_PART), 1007),
        "count 0": (legacy_binary(0, [], JSON_PART), 1007),
        "negative count": (legacy_binary(-5, [8], JSON_PART), 1007),
        "more offsets than buffers allowed": (legacy_binary(100, [404] * 100, JSON_PART), 1007),
        "offset past the end": (legacy_binary(1, [10**6], JSON_PART), 1007),
        "decreasing offsets": (legacy_binary(2, [20, 12], JSON_PART), 1007),
        "offset inside the table": (legacy_binary(1, [0], JSON_PART), 1007),
        "JSON part not JSON": (legacy_binary(1, [8], b"{nope"), 1007),
        "text frame not JSON": ("{not json", 1007),
    }


@pytest.mark.parametrize("v1", [True, False], ids=["v1", "legacy"])
async def test_bad_frames_close_with_a_code_and_reason(base, kernels, v1):
    kernel_id, control = kernels
    frames = bad_v1_frames() if v1 else bad_legacy_frames()
    for name, (frame, code) in frames.items():
        ws = await open_ws(base, kernel_id, v1)
        await ws.write_message(frame, binary=isinstance(frame, bytes))
        close_code, reason = await closed_with(ws)
        assert close_code == code, (name, close_code, reason)
        assert reason, name
    await assert_alive(base, kernel_id, control)


async def test_valid_binary_frames_still_work(base, kernels):
    kernel_id, control = kernels
    # v1 with a buffer, and legacy binary with a buffer
    ws = await open_ws(base, kernel_id, True)
    msg = good(content={"code": "6*7"})
    parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata")]
    frame = serialize_msg_to_ws_v1([*parts, json.dumps(msg["content"]).encode(), b"buf"], "shell")
    await ws.write_message(frame, binary=True)
    reply = None
    while reply is None:
        _, parts = deserialize_msg_from_ws_v1(await asyncio.wait_for(ws.read_message(), 30))
        header = json.loads(parts[0])
        if header["msg_type"] == "execute_reply":
            reply = json.loads(parts[3])
    assert reply["status"] == "ok"
    ws.close()
    ws = await open_ws(base, kernel_id, False)
    msg = good(content={"code": "6*7"})
    body = json.dumps(msg).encode()
    await ws.write_message(legacy_binary(2, [12, 12 + len(body)], body + b"buf"), binary=True)
    while True:
        got = json.loads(await asyncio.wait_for(ws.read_message(), 30))
        if got["msg_type"] == "execute_reply":
            assert got["content"]["status"] == "ok"
            break
    ws.close()
    await assert_alive(base, kernel_id, control)


async def test_huge_claimed_counts_keep_gateway_memory_bounded(base, kernels):
    kernel_id, control = kernels
    frames = [
        (True, v1_raw(2**63 - 1, [0])),
        (True, v1_raw(2**25, [0] * 1000)),
        (True, b'{"header": {"msg_id": "x"}}' + b" " * (MAX_MESSAGE - 40)),
        (True, json.dumps(good())),
        (False, legacy_binary(2**31 - 1, [0] * 1000, JSON_PART)),
        (False, legacy_binary(2**25, [8], b"x" * (MAX_MESSAGE - 16))),
    ]
    before = vm_rss()
    for _ in range(5):
        for v1, frame in frames:
            ws = await open_ws(base, kernel_id, v1)
            await ws.write_message(frame, binary=isinstance(frame, bytes))
            code, _ = await closed_with(ws)
            assert code in (1003, 1007)
    growth = vm_rss() - before
    assert growth < 64 * 1024 * 1024, f"gateway RSS grew {growth / 2**20:.1f} MiB"
    await assert_alive(base, kernel_id, control)


async def test_a_frame_of_exactly_the_size_limit_is_taken_one_byte_more_is_1009(base, kernels):
    kernel_id, control = kernels

    def frame_of(size: int) -> tuple[str, str]:
        m = good(content={"code": "len('')"})
        text = json.dumps(m)
        pad = size - len(text.encode())
        m["content"]["code"] = "len('" + "x" * pad + "')"
        text = json.dumps(m)
        assert len(text.encode()) == size
        return text, m["header"]["msg_id"]

    client = await WSKernelClient.connect(base, kernel_id)
    try:
        text, msg_id = frame_of(MAX_MESSAGE)
        entry = client.pending[msg_id] = Reply()
        await client.ws.write_message(text)
        await wait_for(lambda: entry.reply is not None, 30, "reply to the frame at the limit")
        assert entry.reply["content"]["status"] == "ok"
        # One byte over, as the frame header announces it: tornado refuses it from the
        # header, before reading the payload. (With the payload sent too, the close frame
        # races the TCP reset caused by the unread bytes; the verdict is the same.)
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, MAX_MESSAGE + 1) + b"\0" * 4
        await client.ws.protocol.stream.write(header)
        await wait_for(client.closed.is_set, 30, "close after a frame over the limit")
        assert client.ws.close_code == 1009
        assert client.ws.close_reason
    finally:
        client.close()
    await assert_alive(base, kernel_id, control)


# -- many sockets, many frames -------------------------------------------------------------


async def test_a_thousand_websockets_on_one_kernel_are_refused_before_the_upgrade(
    base, gateway, kernels
):
    """Sockets over the per-kernel cap get HTTP 429 with a JSON reason, never a session."""
    kernel_id, control = kernels
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    kept, refused = [], []

    async def one():
        """Open a socket and ask for kernel_info: an accepted socket answers."""
        try:
            ws = await websocket_connect(HTTPRequest(url))
        except HTTPClientError as e:
            refused.append((e.code, e.response.headers, json.loads(e.response.body)))
            return
        await ws.write_message(json.dumps(good("kernel_info_request", {})))
        while True:
            message = await asyncio.wait_for(ws.read_message(), 30)
            assert message is not None, (ws.close_code, ws.close_reason)
            if json.loads(message)["msg_type"] == "kernel_info_reply":
                kept.append(ws)
                return

    before = vm_rss()
    for _ in range(10):  # 1,000 sockets, 100 at a time
        await asyncio.gather(*(one() for _ in range(100)))
    try:
        assert len(kept) == PER_KERNEL
        assert len(refused) == 1000 - PER_KERNEL
        assert {code for code, _, _ in refused} == {429}
        assert {headers.get("Retry-After") for _, headers, _ in refused} == {"1"}
        assert all(f"(limit {PER_KERNEL})" in body["message"] for _, _, body in refused)
        assert refused[0][2]["reason"] == "Too Many WebSockets"
        assert vm_rss() - before < 64 * 1024 * 1024
        # every kept socket still works; the control kernel is fine
        client = WSKernelClient(kept[0], kernel_id)
        r = await client.execute("1+1", timeout=30)
        assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
        r = await control.execute("1+1", timeout=30)
        assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
        client.reader.cancel()
    finally:
        for ws in kept:
            ws.close()
    kernel = gateway.kernel_manager.get_kernel(kernel_id)
    await wait_for(lambda: kernel.connections == 0, 30, "closed sockets are released")
    slots = gateway.http_server.request_callback.settings["kcr_ws_slots"]
    await wait_for(lambda: kernel_id not in slots.kernels, 30, "their slots are released")
    # released slots can be taken again
    again = await WSKernelClient.connect(base, kernel_id)
    again.close()
    await assert_alive(base, kernel_id, control)


async def test_the_identity_and_gateway_caps_refuse_before_the_upgrade(base, gateway, kernels):
    """Across kernels: one client over the per-identity cap, then the gateway-wide cap."""
    kernel_id, control = kernels
    slots = gateway.http_server.request_callback.settings["kcr_ws_slots"]
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    for attr, words in (
        ("per_identity", "client 127.0.0.1 has {n} kernel WebSockets open (limit {n})"),
        ("total", "the gateway has {n} kernel WebSockets open (limit {n})"),
    ):
        saved, held = getattr(slots, attr), slots.open  # the control kernel's socket
        cap = held + 2
        setattr(slots, attr, cap)
        opened = []
        try:
            for _ in range(2):
                opened.append(await websocket_connect(HTTPRequest(url)))
            with pytest.raises(HTTPClientError) as refused:
                await websocket_connect(HTTPRequest(url))
            assert refused.value.code == 429
            assert json.loads(refused.value.response.body)["message"] == words.format(n=cap)
        finally:
            setattr(slots, attr, saved)
            for ws in opened:
                ws.close()
        await wait_for(lambda held=held: slots.open == held, 30, "the slots are released")
    await assert_alive(base, kernel_id, control)


async def test_a_frame_flood_is_bounded_with_queue_full_replies_and_a_close(base, gateway, kernels):
    """10,000 frames as fast as the client can write them, while a cell waits for input."""
    kernel_id, control = kernels
    client = await WSKernelClient.connect(base, kernel_id)
    waiting = client.send(client.make("execute_request", {"code": "input()", "allow_stdin": True}))
    await wait_for(lambda: waiting.stdin, 30, "input_request")
    before = vm_rss()
    flood = [client.make("execute_request", {"code": "pass"}) for _ in range(10_000)]
    entries = [client.pending.setdefault(m["header"]["msg_id"], Reply()) for m in flood]
    for m in flood:
        client.ws.write_message(json.dumps(m))
    await wait_for(client.closed.is_set, 60, "the flooding socket is closed")
    assert client.ws.close_code == 1008
    assert "frames per second" in client.ws.close_reason
    full = [e for e in entries if e.reply is not None]
    assert full, "no KernelQueueFull reply"
    assert {e.reply["content"]["ename"] for e in full} == {"KernelQueueFull"}
    assert len(full) < BURST  # most of the flood was never handled
    assert vm_rss() - before < 64 * 1024 * 1024
    # the waiting cell is answered from another socket; its queue drains; all is well
    other = await WSKernelClient.connect(base, kernel_id)
    try:
        await other.input_reply("done")
        session = gateway.kernel_manager.get_kernel(kernel_id).session
        await wait_for(lambda: session.queued == (0, 0), 60, "the queued requests ran")
        r = await other.execute("1+1", timeout=60)
        assert r.outputs("execute_result")[0]["data"]["text/plain"] == "2"
    finally:
        other.close()
        client.close()
    await assert_alive(base, kernel_id, control)

"""State snapshot -> a fresh runner -> restore, with modules, functions, objects and skips."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from .conftest import stream_text

SETUP = """
import numpy as np
import os.path as osp
from os.path import join
import threading

def double(x):
    return 2 * x

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2

p = Point(3, 4)
arr = np.arange(6).reshape(2, 3)
shared = [1, 2]
alias = shared
lock = threading.Lock()
_private = 'not saved'
"""

CHECK = """
print(double(21), p.norm2(), arr.sum(), np.__name__, osp.__name__, join('a', 'b'))
print(alias is shared, 'lock' in dir(), '_private' in dir())
"""


async def test_snapshot_restore_round_trip_into_a_new_runner(start_runner):
    pytest.importorskip("numpy")
    source = start_runner()
    channel = await source.channel()
    _, reply = await channel.execute(SETUP)
    assert reply["content"]["status"] == "ok"
    await channel.close()

    response = await source.http("POST", "/state/snapshot")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    blob = response.body
    magic, version, header_length = struct.unpack_from(">8sHI", blob)
    assert (magic, version) == (b"KCRSTATE", 1)
    header = json.loads(blob[14 : 14 + header_length])
    assert header["modules"] == {"np": "numpy", "osp": "posixpath", "threading": "threading"}
    assert header["imports"] == {"join": ["posixpath", "join"]}
    errors = json.loads(response.headers["X-KCR-State-Errors"])
    assert [e["name"] for e in errors] == ["lock"]
    assert "lock" in errors[0]["reason"]

    target = start_runner()
    restored = await target.http("POST", "/state/restore", body=blob)
    assert restored.code == 200, restored.body
    result = json.loads(restored.body)
    assert {"np", "osp", "join", "double", "Point", "p", "arr", "shared", "alias"} <= set(
        result["restored"]
    )
    assert "lock" not in result["restored"] and "_private" not in result["restored"]
    assert result["errors"] == []
    channel = await target.channel()
    try:
        events, reply = await channel.execute(CHECK)
        assert reply["content"]["status"] == "ok", reply
        assert stream_text(events) == "42 25 15 numpy posixpath a/b\nTrue False False\n"
    finally:
        await channel.close()


async def test_snapshot_waits_for_the_running_cell(shared_runner, channel):
    flag = shared_runner.workspace / "release-snapshot"
    code = (
        "import os, time\n"
        "print('running', flush=True)\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.02)\n"
        "set_at_end = 'yes'\n"
    )
    id = await channel.send("execute", {"code": code})
    await channel.wait_for(lambda f: f.get("id") == id and f["event"] == "stream")
    snapshot = asyncio.ensure_future(shared_runner.http("POST", "/state/snapshot"))
    health = json.loads((await shared_runner.http("GET", "/healthz")).body)
    assert health["busy"] is True
    assert not snapshot.done()
    flag.write_text("go")
    await channel.reply(id)
    response = await snapshot
    assert response.code == 200
    assert "set_at_end" in json.loads(response.headers["X-KCR-State-Names"])


async def test_restore_refuses_a_blob_that_is_not_a_snapshot(shared_runner):
    response = await shared_runner.http("POST", "/state/restore", body=b"garbage" * 10)
    assert response.code == 400
    assert json.loads(response.body)["reason"] == "bad_state"


async def test_snapshot_over_the_size_limit_fails_clearly(start_runner):
    runner = start_runner("--max-state-bytes", "20000")
    channel = await runner.channel()
    try:
        await channel.execute("import os\nbig = os.urandom(100_000)")
    finally:
        await channel.close()
    response = await runner.http("POST", "/state/snapshot")
    assert response.code == 413
    body = json.loads(response.body)
    assert body["reason"] == "state_too_large"
    assert "20000" in body["message"]

"""The worker dying (exit, segfault, SIGKILL as the OOM killer does) never takes the runner."""

from __future__ import annotations

import json

import pytest

CRASHES = {
    "exit": ("import os\nos._exit(1)", "exit code 1"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
async def test_worker_death_ends_the_request_and_is_reported(start_runner, case):
    code, why = CRASHES[case]
    runner = start_runner()
    channel = await runner.channel()
    try:
        await channel.execute("x = 1")
        events, reply = await channel.execute(code)
        errors = [e for e in events if e["event"] == "error"]
        assert errors, events
        assert "the kernel process died" in errors[-1]["content"]["evalue"]
        assert why in errors[-1]["content"]["evalue"]
        assert reply["msg_type"] == "execute_reply"
        assert reply["content"]["status"] == "error"

        health = await runner.http("GET", "/healthz")
        assert health.code == 200
        body = json.loads(health.body)
        assert body["status"] == "dead" and body["worker"] == "dead"
        assert why in body["detail"]

        # every later request fails at once with the same reason; the runner keeps answering
        events, again = await channel.execute("x")
        assert again["content"]["status"] == "error"
        assert "the kernel process died" in again["content"]["evalue"]
        _, complete = await channel.request("complete", {"code": "x", "cursor_pos": 1})
        assert complete["msg_type"] == "complete_reply"
        assert complete["content"]["status"] == "error"
        snapshot = await runner.http("POST", "/state/snapshot")
        assert snapshot.code == 409
        assert (await runner.http("GET", "/files")).code == 200
    finally:
        await channel.close()

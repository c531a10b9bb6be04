"""Helpers for the sandbox tests: talk to a pod's (fake) runner, poll for conditions."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

FAKE_RUNNER = Path(__file__).resolve().parents[1] / "fakes" / "fake_runner.py"
#: FakeRunner, for runner misbehaviour the real runner cannot be asked for (crash, hang).
FAKE_RUNNER_COMMAND = [sys.executable, str(FAKE_RUNNER)]
#: The real runner (``python -m kcr_runner``), used for everything user code does.
REAL_RUNNER_COMMAND = [sys.executable, "-m", "kcr_runner"]

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


async def run_in_pod(pod, code: str) -> dict:
    """Execute ``code`` as a cell in the pod's worker, over the runner's ``/channel``.

    Returns ``{"rc": 0 | 1, "stdout": ..., "stderr": ...}``: ``rc`` is 1 when the
    reply is not ``ok`` (an exception, or the worker died), ``stderr`` holds the
    stderr stream plus the error's name, value and traceback.
    """
    request = HTTPRequest(
        pod.url.replace("http://", "ws://", 1) + "/channel",
        headers={"Authorization": f"Bearer {pod.token}"},
    )
    ws = await websocket_connect(request)
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    await ws.write_message(json.dumps({"id": "t1", "op": "execute", "content": content}))
    out = {"stdout": "", "stderr": ""}
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 90)
            if raw is None:
                return {**out, "rc": 1, "stderr": out["stderr"] + "channel closed"}
            msg = json.loads(raw)
            event, body = msg.get("event"), msg.get("content", {})
            if event == "stream":
                out[body["name"]] += body["text"]
            elif event == "error":
                trace = "\n".join(body.get("traceback", []))
                out["stderr"] += f"{body.get('ename')}: {body.get('evalue')}\n{trace}"
            elif event == "reply" and msg.get("id") == "t1":
                if body.get("status") != "ok":
                    out["stderr"] += f"{body.get('ename')}: {body.get('evalue')}"
                return {**out, "rc": 0 if body.get("status") == "ok" else 1}
    finally:
        ws.close()


async def until(condition, seconds: float = 10.0) -> None:
    """Poll ``condition()`` until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)

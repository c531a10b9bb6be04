"""Helpers for the sandbox tests: talk to a pod's (fake) runner, poll for conditions."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

FAKE_RUNNER = Path(__file__).resolve().parents[1] / "fakes" / "fake_runner.py"
RUNNER_COMMAND = [sys.executable, str(FAKE_RUNNER)]

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


async def run_in_pod(pod, code: str) -> dict:
    """Run ``code`` with the pod's sandboxed worker prefix; ``{"rc", "stdout", "stderr"}``."""
    request = HTTPRequest(
        f"{pod.url}/run",
        method="POST",
        body=code,
        headers={"Authorization": f"Bearer {pod.token}"},
        request_timeout=90,
    )
    response = await AsyncHTTPClient().fetch(request)
    return json.loads(response.body)


async def until(condition, seconds: float = 10.0) -> None:
    """Poll ``condition()`` until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)

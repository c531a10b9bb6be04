"""Fixtures that start real ``kcr-runner`` processes and talk to them over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import websockets
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

READY_PREFIX = "KCR_RUNNER_READY "


class RunnerProcess:
    """A real runner subprocess on 127.0.0.1 with a random port and its own token."""

    def __init__(self, workspace: Path, *args: str, env: dict[str, str] | None = None):
        self.workspace = workspace
        self.token = uuid.uuid4().hex
        full_env = {**os.environ, "KCR_RUNNER_TOKEN": self.token, **(env or {})}
        cmd = [
            sys.executable,
            "-m",
            "kcr_runner",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workspace",
            str(workspace),
            "--language",
            "python",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=full_env, text=True)
        self.ready = self._read_ready(deadline=time.monotonic() + 60)
        self.port = self.ready["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/channel"

    def _read_ready(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"runner exited early with code {self.proc.wait()}")
                assert line.startswith(READY_PREFIX), f"unexpected stdout line {line!r}"
                return json.loads(line[len(READY_PREFIX) :])
        raise RuntimeError("runner did not print its ready line in time")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def http(
        self, method: str, path: str, body: bytes | str | None = None, token: str | None = None
    ) -> HTTPResponse:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        if body is None and method in ("POST", "PUT"):
            body = b""
        return await AsyncHTTPClient().fetch(
            self.url + path,
            method=method,
            body=body,
            headers=headers,
            raise_error=False,
            request_timeout=60,
            allow_nonstandard_methods=True,
        )

    async def channel(self) -> Channel:
        ws = await websockets.connect(
            self.ws_url, additional_headers=self.headers, max_size=None, open_timeout=10
        )
        return Channel(ws)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Channel:
    """A ``/channel`` client: sends ops and collects the frames of each request id."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self._counter = 0

    async def send(self, op: str, content: dict[str, Any] | None = None, id: Any = None) -> Any:
        if id is None:
            self._counter += 1
            id = f"req-{self._counter}-{uuid.uuid4().hex[:6]}"
        await self.ws.send(json.dumps({"id": id, "op": op, "content": content or {}}))
        return id

    async def next_frame(self, timeout: float = 30) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames[frame.get("id")].append(frame)
        return frame

    async def wait_for(self, predicate, timeout: float = 30) -> dict[str, Any]:
        """Next frame matching ``predicate`` (frames seen before are searched first)."""
        for frames in self.frames.values():
            for frame in frames:
                if predicate(frame) and not frame.get("_seen"):
                    frame["_seen"] = True
                    return frame
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_frame(max(deadline - time.monotonic(), 0.01))
            if predicate(frame):
                frame["_seen"] = True
                return frame

    async def reply(self, id: Any, timeout: float = 30) -> dict[str, Any]:
        return await self.wait_for(
            lambda f: f.get("id") == id and f.get("event") == "reply", timeout
        )

    async def request(
        self, op: str, content: dict[str, Any] | None = None, timeout: float = 30
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send one op; return ``(events, reply frame)`` for it (without its ``ack``)."""
        id = await self.send(op, content)
        reply = await self.reply(id, timeout)
        events = [f for f in self.frames[id] if f.get("event") not in ("reply", "ack")]
        return events, reply

    async def execute(self, code: str, timeout: float = 30, **content: Any):
        return await self.request("execute", {"code": code, **content}, timeout)

    async def close(self) -> None:
        await self.ws.close()


def stream_text(events: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(
        e["content"]["text"]
        for e in events
        if e["event"] == "stream" and e["content"]["name"] == name
    )


@pytest.fixture(scope="module")
def shared_runner(tmp_path_factory):
    """One runner shared by the tests of a module that do not break it."""
    runner = RunnerProcess(tmp_path_factory.mktemp("ws"))
    yield runner
    runner.stop()


@pytest.fixture
def start_runner(tmp_path):
    """Factory: ``start_runner(*args)`` starts a fresh runner; all are stopped afterwards."""
    runners: list[RunnerProcess] = []

    def start(*args: str, workspace: Path | None = None, env=None) -> RunnerProcess:
        ws = workspace or tmp_path / f"ws{len(runners)}"
        ws.mkdir(exist_ok=True)
        runner = RunnerProcess(ws, *args, env=env)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()


@pytest.fixture
async def channel(shared_runner):
    ch = await shared_runner.channel()
    yield ch
    await ch.close()

"""Fixtures: a real kcr-gateway (in this process) with real sandboxed runner pods."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from kcr_gateway.app import KCRGateway
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect
from traitlets.config import Config


async def start_gateway(
    tmp_path, manager: dict | None = None, classes: dict | None = None, **traits
) -> KCRGateway:
    """A gateway on 127.0.0.1:<free port>; ``manager`` sets KCRKernelManager traits,
    ``classes`` other classes' (``{"KCRIdentityProvider": {"token_file": ...}}``)."""
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(tmp_path / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 2}}
    for name, value in traits.items():
        setattr(config.KCRGateway, name, value)
    for name, value in (manager or {}).items():
        setattr(config.KCRKernelManager, name, value)
    for class_name, class_traits in (classes or {}).items():
        for name, value in class_traits.items():
            setattr(config[class_name], name, value)
    app = KCRGateway(config=config)
    await app.start_async()
    await app.pool.wait_warm(60)
    return app


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory):
    app = await start_gateway(tmp_path_factory.mktemp("gw"))
    yield app
    await app.stop_async()


@pytest.fixture
def base_url(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


class HTTPResult:
    """A response whose status is a plain attribute (errors too)."""

    def __init__(self, code: int, body: bytes, headers):
        self.code, self.body, self.headers = code, body, headers

    def json(self):
        return json.loads(self.body)


async def http(
    base: str,
    method: str,
    path: str,
    body=None,
    token: str | None = None,
    headers: dict | None = None,
) -> HTTPResult:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"token {token}"
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if body is None and method in ("POST", "PUT"):
        body = b""
    request = HTTPRequest(
        base + path, method=method, body=body, headers=all_headers, request_timeout=60
    )
    try:
        r = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        if e.response is None:
            raise
        r = e.response
    return HTTPResult(r.code, r.body, r.headers)


@dataclass
class Reply:
    """Everything one request produced: its reply and the iopub messages it parented."""

    reply: dict | None = None
    iopub: list[dict] = field(default_factory=list)
    stdin: list[dict] = field(default_factory=list)

    @property
    def content(self) -> dict:
        return self.reply["content"]

    def outputs(self, msg_type: str) -> list[dict]:
        return [m["content"] for m in self.iopub if m["msg_type"] == msg_type]

    @property
    def stdout(self) -> str:
        return "".join(c["text"] for c in self.outputs("stream") if c["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(c["text"] for c in self.outputs("stream") if c["name"] == "stderr")


class WSKernelClient:
    """A minimal Jupyter client over the gateway's kernel WebSocket (legacy JSON frames)."""

    def __init__(self, ws, kernel_id: str):
        self.ws = ws
        self.kernel_id = kernel_id
        self.session = uuid.uuid4().hex
        self.pending: dict[str, Reply] = {}
        self.unclaimed: list[dict] = []
        self.closed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        self.on_input = None

    @classmethod
    async def connect(
        cls, base: str, kernel_id: str, token: str | None = None, subprotocols=None
    ) -> WSKernelClient:
        url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        headers = {"Authorization": f"token {token}"} if token else {}
        ws = await websocket_connect(HTTPRequest(url, headers=headers), subprotocols=subprotocols)
        ws.protocol.stream.set_nodelay(True)
        return cls(ws, kernel_id)

    def make(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "session": self.session,
                "username": "test",
                "version": "5.3",
                "date": "",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
        }

    async def _read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                self.closed.set()
                return
            msg = json.loads(raw)
            parent_id = (msg.get("parent_header") or {}).get("msg_id")
            entry = self.pending.get(parent_id)
            if entry is None:
                self.unclaimed.append(msg)
                continue
            if msg["channel"] == "iopub":
                entry.iopub.append(msg)
            elif msg["channel"] == "stdin":
                entry.stdin.append(msg)
                if self.on_input is not None:
                    await self.on_input(self, msg)
            else:
                entry.reply = msg

    def send(self, msg: dict) -> Reply:
        entry = self.pending[msg["header"]["msg_id"]] = Reply()
        asyncio.ensure_future(self.ws.write_message(json.dumps(msg)))
        return entry

    async def request(
        self, msg_type: str, content: dict, channel: str = "shell", timeout: float = 60
    ) -> Reply:
        msg = self.make(msg_type, content, channel)
        entry = self.send(msg)
        await wait_for(
            lambda: entry.reply is not None and _idle_seen(entry),
            timeout,
            f"{msg_type} got no reply + idle",
        )
        return entry

    async def execute(self, code: str, timeout: float = 60, **content) -> Reply:
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
            **content,
        }
        return await self.request("execute_request", content, timeout=timeout)

    async def input_reply(self, value: str) -> None:
        await self.ws.write_message(json.dumps(self.make("input_reply", {"value": value}, "stdin")))

    def close(self) -> None:
        self.ws.close()
        self.reader.cancel()


def _idle_seen(entry: Reply) -> bool:
    return any(
        m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in entry.iopub
    )


async def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.01)


async def start_kernel(base: str, token: str | None = None, **body) -> str:
    r = await http(base, "POST", "/api/kernels", body or {"name": "kcr-python"}, token=token)
    assert r.code == 201, r.body
    return r.json()["id"]


@pytest_asyncio.fixture(loop_scope="module")
async def kernel(base_url):
    """A fresh kernel and a WebSocket client attached to it."""
    kernel_id = await start_kernel(base_url)
    client = await WSKernelClient.connect(base_url, kernel_id)
    yield client
    client.close()
    await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")

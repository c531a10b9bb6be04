"""What a Jupyter front end does to a Jupyter Server: REST calls and the kernel WebSocket.

:class:`ServerAPI` speaks the server's REST API with its token;
:class:`KernelChannels` is one ``/api/kernels/{id}/channels`` WebSocket
(legacy JSON frames, as JupyterLab uses against a server in gateway mode) with
the message helpers the tests need. Messages are built by jupyter_client's
``Session``; nothing here re-implements the protocol beyond framing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect


class APIError(AssertionError):
    """A REST call answered with an error status; ``code`` and ``body`` say what."""

    def __init__(self, method: str, path: str, code: int, body: str):
        super().__init__(f"{method} {path} -> {code}: {body[:500]}")
        self.code = code
        self.body = body


class ServerAPI:
    """Token-authenticated REST calls to one Jupyter Server (or the gateway itself)."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self.token = token

    async def call(self, method: str, path: str, body=None, *, timeout: float = 60.0):
        """JSON in, JSON (or ``None`` for an empty body) out; error statuses raise APIError."""
        request = HTTPRequest(
            self.base_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None and method != "POST" else json.dumps(body or {}),
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            text = e.response.body.decode(errors="replace") if e.response else str(e)
            raise APIError(method, path, e.code, text) from None
        return json.loads(response.body) if response.body else None

    async def raw(self, path: str) -> tuple[int, str, bytes]:
        """GET without decoding: ``(status, content type, body)``."""
        request = HTTPRequest(
            self.base_url + path, headers={"Authorization": f"token {self.token}"}
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        return response.code, response.headers.get("Content-Type", ""), response.body

    async def start_session(self, kernel_name: str = "kcr-python", path: str | None = None):
        path = path or f"{uuid.uuid4().hex[:8]}.ipynb"
        return await self.call(
            "POST",
            "/api/sessions",
            {"path": path, "type": "notebook", "name": "", "kernel": {"name": kernel_name}},
        )

    async def kernel_ids(self) -> list[str]:
        return [k["id"] for k in await self.call("GET", "/api/kernels")]


@dataclass
class Execution:
    """Everything one ``execute_request`` produced, in arrival order."""

    reply: dict
    outputs: list[dict] = field(default_factory=list)  # iopub messages other than status

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def of_type(self, msg_type: str) -> list[dict]:
        return [m["content"] for m in self.outputs if m["msg_type"] == msg_type]


class KernelChannels:
    """One kernel WebSocket through the Jupyter Server, with request/response helpers."""

    def __init__(self, ws, session: Session):
        self.ws = ws
        self.session = session
        self.received: list[dict] = []  # every message read so far, any channel
        self._waiters: list[tuple] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, server: ServerAPI, kernel_id: str, session_id: str | None = None):
        session = Session(session=session_id or str(uuid.uuid4()), username="tester", key=b"")
        ws_base = server.base_url.replace("http://", "ws://", 1)
        request = HTTPRequest(
            f"{ws_base}/api/kernels/{kernel_id}/channels?session_id={session.session}",
            headers={"Authorization": f"token {server.token}"},
            request_timeout=30,
        )
        ws = await websocket_connect(request)
        return cls(ws, session)

    async def _read(self) -> None:
        while True:
            frame = await self.ws.read_message()
            if frame is None:
                break
            msg = json.loads(frame)
            self.received.append(msg)
            for waiter in list(self._waiters):
                predicate, future = waiter
                if not future.done() and predicate(msg):
                    future.set_result(msg)
                    self._waiters.remove(waiter)
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(ConnectionError("the kernel WebSocket closed"))

    def close(self) -> None:
        self.ws.close()
        self._reader.cancel()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def send(self, msg_type: str, content: dict | None = None, channel: str = "shell") -> dict:
        msg = self.session.msg(msg_type, content or {})
        msg["channel"] = channel
        msg["buffers"] = []
        self.ws.write_message(json.dumps(msg, default=json_default))
        return msg

    async def wait_for(self, predicate, timeout: float = 30.0, what: str = "a message") -> dict:
        for msg in self.received:
            if predicate(msg):
                return msg
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout:g} s; got: "
                + ", ".join(m.get("msg_type", "?") for m in self.received[-20:])
            ) from None

    async def request(self, msg_type: str, content=None, channel="shell", timeout=30.0) -> dict:
        """Send a request and return its reply (matched by parent msg_id)."""
        msg_id = self.send(msg_type, content, channel)["header"]["msg_id"]
        reply_type = msg_type.replace("_request", "_reply")
        return await self.wait_for(
            lambda m: (
                m.get("msg_type") == reply_type
                and m.get("parent_header", {}).get("msg_id") == msg_id
            ),
            timeout,
            reply_type,
        )

    def start_execute(self, code: str, **content) -> str:
        content = {"code": code, "silent": False, "store_history": True, **content}
        return self.send("execute_request", content)["header"]["msg_id"]

    async def finish_execute(self, msg_id: str, timeout: float = 60.0) -> Execution:
        """Wait for the reply and the ``idle`` status of one execute; collect its outputs."""
        reply = await self.wait_for(
            lambda m: (
                m.get("msg_type") == "execute_reply" and m["parent_header"].get("msg_id") == msg_id
            ),
            timeout,
            "execute_reply",
        )
        await self.wait_for(lambda m: _is_status(m, "idle", msg_id), timeout, "idle status")
        outputs = [
            m
            for m in self.received
            if m.get("channel") == "iopub"
            and m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] != "status"
        ]
        return Execution(reply=reply["content"], outputs=outputs)

    async def execute(self, code: str, timeout: float = 60.0, **content) -> Execution:
        return await self.finish_execute(self.start_execute(code, **content), timeout)

    async def wait_busy(self, msg_id: str, timeout: float = 30.0) -> None:
        await self.wait_for(lambda m: _is_status(m, "busy", msg_id), timeout, "busy status")


def _is_status(msg: dict, state: str, parent_id: str) -> bool:
    return (
        msg.get("msg_type") == "status"
        and msg["content"].get("execution_state") == state
        and msg["parent_header"].get("msg_id") == parent_id
    )


async def poll_until(check, timeout: float = 30.0, what: str = "the condition"):
    """Await ``check()`` until it returns a truthy value; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:g} s (last: {last!r})")

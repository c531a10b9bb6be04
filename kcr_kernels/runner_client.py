"""Client side of the runner protocol: HTTP control calls + the multiplexed channel.

The runner (``kcr-runner``, in the pod) serves a few HTTP endpoints and one
WebSocket, ``/channel``, on which requests and their events are multiplexed by
request id. :class:`RunnerClient` wraps both for one pod. It knows nothing of
Jupyter messages: :class:`kcr_kernels.session.KernelSession` does that.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

log = logging.getLogger("kcr.runner_client")

#: Called with (event type, content) for every event of one request.
EventCallback = Callable[[str, dict], None]


class RunnerError(RuntimeError):
    """A runner call failed; the message says which call and why.

    ``status`` is the runner's HTTP status when it answered with an error, else ``None``.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RunnerGone(RunnerError):
    """The runner cannot be reached any more: its pod died or was deleted."""


class NotDelivered(RunnerGone):
    """The runner went away before it acknowledged the request: it never ran there, and
    sending it again (to a new pod) cannot run it twice."""


class _Pending:
    __slots__ = ("acked", "future", "on_event")

    def __init__(self, on_event: EventCallback | None):
        self.on_event = on_event
        self.acked = False  # the runner said it has the request (an "ack", or any event)
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()


class RunnerClient:
    """Talks to one runner: HTTP control calls and the ``/channel`` WebSocket.

    Contract:

    * :meth:`connect` opens the channel; :meth:`request` sends one op and
      resolves to its ``reply`` frame (``{"msg_type": ..., "content": ...}``)
      after passing every intermediate event to ``on_event`` in order.
    * Frames with ``"id": null`` (e.g. a widget callback's output) go to
      ``on_unsolicited``.
    * Back-pressure: after each frame, ``backpressure()`` (if set) may return an
      awaitable; nothing more is read from the runner until it is done, so a slow
      consumer makes the runner stop reading its worker (the worker blocks) instead
      of the gateway buffering output. The loop yields to other tasks after every
      frame, so a flood of small frames never starves the event loop.
    * When the channel drops, every pending request fails with
      :class:`RunnerGone` and ``on_lost`` is called once (unless the drop
      was caused by :meth:`close`). A request the runner had not acknowledged
      yet (its ``ack`` frame, sent on receipt) fails with :class:`NotDelivered`
      (a :class:`RunnerGone`), as does one sent on a channel already lost: the
      caller may send it again elsewhere.
    * HTTP calls raise :class:`RunnerGone` when the runner is unreachable and
      :class:`RunnerError` (with the runner's JSON message) for an error status.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        request_timeout: float = 60.0,
        on_unsolicited: EventCallback | None = None,
        on_lost: Callable[[], None] | None = None,
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout
        self.on_unsolicited = on_unsolicited
        self.on_lost = on_lost
        self.backpressure: Callable[[], Awaitable[Any] | None] | None = None
        self._ws: WebSocketClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self.lost = False

    # -- channel ------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        ws_url = "ws" + self.url[len("http") :] + "/channel"
        request = HTTPRequest(
            ws_url, headers=self._auth_headers(), connect_timeout=timeout, request_timeout=timeout
        )
        try:
            self._ws = await websocket_connect(request, max_message_size=256 * 1024 * 1024)
        except (OSError, HTTPClientError) as e:
            raise RunnerGone(f"cannot open the runner channel at {ws_url}: {e}") from e
        # Small request/reply frames must not wait for Nagle's algorithm.
        stream = getattr(self._ws, "stream", None) or getattr(self._ws.protocol, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        self._reader = asyncio.create_task(self._read_loop())

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self.lost

    async def request(
        self,
        op: str,
        content: dict,
        on_event: EventCallback | None = None,
        header: dict | None = None,
        metadata: dict | None = None,
    ) -> dict:
        """Send ``op`` and wait for its reply frame. ``header``: the client's Jupyter header,
        which the Python worker gives its kernel as the request's own (same msg_id), and
        ``metadata`` the client message's metadata (e.g. ipywidgets' protocol version)."""
        if self._ws is None or self.lost:
            raise NotDelivered("the runner channel is closed")
        request_id = str(next(self._ids))
        pending = _Pending(on_event)
        self._pending[request_id] = pending
        try:
            await self._write(_frame(request_id, op, content, header, metadata))
            return await pending.future
        finally:
            self._pending.pop(request_id, None)

    def start_request(
        self,
        op: str,
        content: dict,
        on_event: EventCallback | None = None,
        header: dict | None = None,
        metadata: dict | None = None,
    ) -> tuple[str, asyncio.Future]:
        """Like :meth:`request` but returns ``(request id, reply future)`` at once.

        The id is what ``input_reply`` must carry to answer an ``input_request``.
        """
        if self._ws is None or self.lost:
            raise NotDelivered("the runner channel is closed")
        request_id = str(next(self._ids))
        pending = _Pending(on_event)
        self._pending[request_id] = pending
        pending.future.add_done_callback(lambda _f: self._pending.pop(request_id, None))
        sent = self._write_now(_frame(request_id, op, content, header, metadata))
        if sent is not None:
            sent.add_done_callback(
                lambda f: (
                    f.cancelled()
                    or f.exception() is None
                    or self._channel_lost(f"write failed: {f.exception()}")
                )
            )
        return request_id, pending.future

    async def send(self, op: str, content: dict, request_id: str | None = None) -> None:
        """Send a frame that gets no reply (``input_reply``, ``comm_msg``)."""
        if self._ws is None or self.lost:
            raise RunnerGone("the runner channel is closed")
        await self._write({"id": request_id, "op": op, "content": content})

    async def _write(self, frame: dict) -> None:
        sent = self._write_now(frame)
        if sent is None:
            return
        try:
            await sent
        except Exception as e:  # WebSocketClosedError, StreamClosedError
            self._channel_lost(f"write failed: {e}")

    def _write_now(self, frame: dict) -> asyncio.Future | None:
        """Queue ``frame`` on the socket at once (frames keep the order of these calls)."""
        try:
            return self._ws.write_message(json.dumps(frame))
        except Exception as e:  # WebSocketClosedError, StreamClosedError
            self._channel_lost(f"write failed: {e}")
            return None

    async def _read_loop(self) -> None:
        ws = self._ws
        while True:
            raw = await ws.read_message()
            if raw is None:
                break
            try:
                frame = json.loads(raw)
            except ValueError:
                log.warning("runner %s sent a frame that is not JSON: %.200r", self.url, raw)
                continue
            self._dispatch(frame)
            wait = self.backpressure() if self.backpressure is not None else None
            if wait is not None:
                await wait
            else:
                await asyncio.sleep(0)
        reason = ws.close_reason or f"code {ws.close_code}"
        self._channel_lost(f"the runner closed the channel ({reason})")

    def _dispatch(self, frame: dict) -> None:
        event = frame.get("event")
        pending = self._pending.get(frame.get("id")) if frame.get("id") is not None else None
        if pending is None:
            if frame.get("id") is None and self.on_unsolicited is not None and event:
                self.on_unsolicited(event, frame.get("content") or {}, frame)
            return
        pending.acked = True
        if event == "ack":
            return
        if event == "reply":
            if not pending.future.done():
                pending.future.set_result(frame)
        elif pending.on_event is not None:
            try:
                if "buffers" in frame or "metadata" in frame:
                    pending.on_event(event, frame.get("content") or {}, frame)
                else:
                    pending.on_event(event, frame.get("content") or {})
            except Exception:
                log.exception("event handler failed for %s", event)

    def _channel_lost(self, why: str) -> None:
        if self.lost:
            return
        self.lost = True
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception((RunnerGone if pending.acked else NotDelivered)(why))
        self._pending.clear()
        if not self._closing and self.on_lost is not None:
            self.on_lost()

    def close(self) -> None:
        """Close the channel; pending requests fail with :class:`RunnerGone`."""
        self._closing = True
        if self._ws is not None:
            self._ws.close()
        self._channel_lost("the channel was closed by the gateway")
        if self._reader is not None:
            self._reader.cancel()

    # -- HTTP ---------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One HTTP call; returns the tornado response (``.body``, ``.headers``)."""
        all_headers = self._auth_headers()
        if headers:
            all_headers.update(headers)
        request = HTTPRequest(
            self.url + path,
            method=method,
            body=body if body is not None else (b"" if method in ("POST", "PUT") else None),
            headers=all_headers,
            request_timeout=timeout or self.request_timeout,
            connect_timeout=min(10.0, timeout or self.request_timeout),
            decompress_response=False,
        )
        try:
            return await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.code == 599 or e.response is None:
                raise RunnerGone(f"runner {self.url} unreachable on {method} {path}: {e}") from e
            raise RunnerError(_error_text(method, path, e.code, e.response.body), e.code) from e
        except OSError as e:
            raise RunnerGone(f"runner {self.url} unreachable on {method} {path}: {e}") from e

    async def call_json(self, method: str, path: str, payload: Any = None, **kw) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        response = await self.call(
            method, path, body, headers={"Content-Type": "application/json"}, **kw
        )
        return json.loads(response.body) if response.body else None

    async def call_json_body(self, method: str, path: str, body: bytes, **kw) -> Any:
        """Send raw bytes, parse a JSON answer."""
        response = await self.call(
            method, path, body, headers={"Content-Type": "application/octet-stream"}, **kw
        )
        return json.loads(response.body) if response.body else None

    # -- streamed workspace files ---------------------------------------------

    async def stream_file_get(
        self, path: str, on_chunk: Callable[[bytes], Awaitable[None]], *, timeout: float = 3600.0
    ) -> None:
        """``GET /files/{path}``, passing the bytes to ``on_chunk`` as they arrive.

        ``on_chunk`` is awaited before more is read (back-pressure), so the file is
        never held whole. Errors as for :meth:`call`; an error status is raised
        before ``on_chunk`` sees any byte.
        """
        status: dict[str, int] = {}
        error_body = bytearray()

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                status["code"] = int(line.split()[1])

        async def on_body(chunk: bytes) -> None:
            if status.get("code") == 200:
                await on_chunk(chunk)
            elif len(error_body) < 4096:
                error_body.extend(chunk[:4096])

        await self._stream(
            "GET",
            path,
            timeout,
            header_callback=on_header,
            streaming_callback=on_body,
            error_body=error_body,
        )

    async def stream_file_put(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int | None = None,
        timeout: float = 3600.0,
    ) -> None:
        """``PUT /files/{path}`` with the body taken from ``chunks`` as it is sent.

        ``size`` becomes the Content-Length (else the body is chunked). Errors as
        for :meth:`call`.
        """

        async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
            async for chunk in chunks:
                if chunk:
                    await write(chunk)

        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        await self._stream("PUT", path, timeout, body_producer=produce, headers=headers)

    async def _stream(
        self, method: str, path: str, timeout: float, *, error_body=None, headers=None, **kw
    ) -> None:
        url_path = "/files/" + quote(path, safe="/")
        request = HTTPRequest(
            self.url + url_path,
            method=method,
            headers={**self._auth_headers(), **(headers or {})},
            request_timeout=timeout,
            connect_timeout=min(10.0, timeout),
            decompress_response=False,
            **kw,
        )
        # A client of its own: the shared one buffers at most 100 MB per body and
        # queues requests behind others; this one streams any size.
        client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 50)
        try:
            response = await client.fetch(request, raise_error=False)
        except OSError as e:
            raise RunnerGone(f"runner {self.url} unreachable on {method} {url_path}: {e}") from e
        finally:
            client.close()
        if response.code == 599:
            raise RunnerGone(
                f"runner {self.url} unreachable on {method} {url_path}: {response.error}"
            )
        if response.code >= 400:
            body = bytes(error_body) if error_body is not None else response.body
            raise RunnerError(_error_text(method, url_path, response.code, body), response.code)

    async def healthz(self, timeout: float = 5.0) -> dict:
        return await self.call_json("GET", "/healthz", timeout=timeout)

    async def kernel_info(self) -> dict:
        return await self.call_json("GET", "/kernel_info")

    async def interrupt(self) -> None:
        await self.call("POST", "/interrupt", timeout=10.0)

    async def set_env(self, env: dict[str, str]) -> None:
        await self.call_json("POST", "/env", env, timeout=10.0)


def _frame(
    request_id: str, op: str, content: dict, header: dict | None, metadata: dict | None = None
) -> dict:
    frame = {"id": request_id, "op": op, "content": content}
    if header:
        frame["header"] = header
    if metadata:
        frame["metadata"] = metadata
    return frame


def _error_text(method: str, path: str, code: int, body: bytes | None) -> str:
    detail = ""
    try:
        detail = json.loads(body).get("message") or json.loads(body).get("reason") or ""
    except Exception:
        detail = (body or b"")[:200].decode(errors="replace")
    return f"runner call {method} {path} failed with HTTP {code}: {detail}".rstrip(": ")

"""Gateway mode of the bridge kernel: relay ZMQ messages to a kcr gateway kernel.

The kernel lives on the gateway (warm pool, durable state, files); the bridge
only moves messages between the client's ZMQ sockets and the kernel's
WebSocket (``/api/kernels/{id}/channels``, protocol
``v1.kernel.websocket.jupyter.org``). Message parts are relayed as the bytes
they arrived as: only headers are read, to route replies back to the client
that sent the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from .gateway_api import GatewayAPI, GatewayError, KernelGone, reason
from .sockets import KernelSockets

log = logging.getLogger("kcr.bridge.gateway")

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: Messages kept for the gateway while the WebSocket reconnects.
MAX_BACKLOG = 10_000


class GatewayKernel:
    """One kernel on a gateway, served to ZMQ clients.

    Contract:

    * :meth:`start` creates the kernel (``POST /api/kernels`` with the
      ``KERNEL_*`` environment) unless ``kernel_id`` names one that exists,
      and opens its WebSocket; failures raise :class:`GatewayError`.
    * Requests are relayed unchanged; replies and stdin messages go back to
      the ZMQ identity that sent the request, iopub to every subscriber
      (except the gateway's ``iopub_welcome`` for the WebSocket itself: ZMQ
      subscribers are welcomed by :class:`.sockets.KernelSockets`).
    * ``shutdown_request`` is answered here, the kernel is deleted on the
      gateway, then ``on_exit(0)``: jupyter_client restarts a kernel by
      starting a new bridge, so restart requests end this one too.
    * ``KERNEL_WORKING_DIR`` (the notebook's folder, set by the provisioner) is synced
      with the kernel's working folder through the gateway's files API when
      ``folder_sync``: its files go to the kernel before the first cell, the kernel's new
      and changed files come back before the kernel is deleted at shutdown.
    * When the WebSocket drops, the bridge reconnects to the same kernel
      (its state lives on the gateway) and delivers the messages sent in
      between. Requests that were waiting for a reply when it dropped get an
      error reply, a note on stderr and ``status: idle``: the user learns
      about the drop only when something was lost. A kernel the gateway no
      longer has, or a gateway unreachable for ``reconnect_timeout`` seconds,
      ends the bridge with ``on_exit(1)``.
    """

    def __init__(
        self,
        sockets: KernelSockets,
        api: GatewayAPI,
        *,
        kernel_id: str | None = None,
        kernel_name: str = "kcr-python",
        env: dict[str, str] | None = None,
        reconnect_timeout: float = 60.0,
        folder_sync: bool = True,
        on_exit: Callable[[int], None],
    ):
        self.sockets = sockets
        self.api = api
        self.kernel_id = kernel_id
        self.kernel_name = kernel_name
        self.env = dict(env or {})
        self.reconnect_timeout = reconnect_timeout
        self.on_exit = on_exit
        self.ws: WebSocketClientConnection | None = None
        # request msg_id -> (channel, ZMQ identities, request header)
        self._pending: dict[str, tuple[str, list[bytes], dict]] = {}
        self._backlog: list[bytes] = []
        self._reader: asyncio.Task | None = None
        self._closing = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()  # shutdowns and reconnects this kernel owns
        self.reconnects = 0
        self.folder_sync = folder_sync
        self._folder = None  # KernelFolderSync of KERNEL_WORKING_DIR, when there is one

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.kernel_id is None:
            self.kernel_id = await self.api.create_kernel(self.kernel_name, self.env)
        await self._sync_folder_in()
        await self._connect()

    async def _sync_folder_in(self) -> None:
        """``KERNEL_WORKING_DIR`` (the notebook's folder) → the kernel's working folder."""
        folder = self.env.get("KERNEL_WORKING_DIR", "")
        if not folder or not self.folder_sync or not os.path.isdir(folder):  # noqa: ASYNC240
            return
        from ..server_extension.batch import open_folder_sync

        self._folder = open_folder_sync(self.kernel_id, folder, self.api.url, self.api.headers())
        for notice in await self._folder.before_cell():
            print(notice, file=sys.stderr)

    async def _sync_folder_out(self) -> None:
        """The kernel's new and changed files → the notebook's folder (before deletion)."""
        sync, self._folder = self._folder, None
        if sync is None:
            return
        try:
            for notice in await sync.after_cell():
                print(notice, file=sys.stderr)
        except Exception as e:  # never keep a shutdown from deleting the kernel
            print(f"[kcr] the kernel's files were not brought back: {e}", file=sys.stderr)
        finally:
            sync.files.close()

    async def _connect(self) -> None:
        url = self.api.channels_url(self.kernel_id)
        request = HTTPRequest(
            url, headers=self.api.headers(), connect_timeout=10.0, request_timeout=10.0
        )
        try:
            ws = await websocket_connect(
                request, subprotocols=[V1_PROTOCOL], max_message_size=1 << 30
            )
        except HTTPClientError as e:
            if e.code == 404:
                raise KernelGone(f"the gateway has no kernel {self.kernel_id}")
            raise GatewayError(f"cannot open the kernel WebSocket {url}: {reason(e)}")
        except OSError as e:
            raise GatewayError(f"cannot open the kernel WebSocket {url}: {e}")
        if ws.selected_subprotocol != V1_PROTOCOL:
            ws.close()
            raise GatewayError(f"the gateway at {self.api.url} does not speak {V1_PROTOCOL}")
        # Small request/reply frames must not wait for Nagle's algorithm.
        stream = getattr(ws, "stream", None) or getattr(ws.protocol, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        self.ws = ws
        backlog, self._backlog = self._backlog, []
        for frame in backlog:
            self._write(frame)
        self._reader = asyncio.create_task(self._read_loop(ws))

    async def close(self, delete: bool = True) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            self.ws.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():  # a shutdown closes from its own task
                task.cancel()
        if delete and self.kernel_id is not None:
            await self._sync_folder_out()
            try:
                await self.api.delete_kernel(self.kernel_id)
            except GatewayError as e:
                print(f"[kcr] could not delete kernel {self.kernel_id}: {e}", file=sys.stderr)
        self.api.close()

    # -- client -> gateway ----------------------------------------------------------

    def handle_raw(self, channel: str, idents: list[bytes], parts: list[bytes]) -> None:
        header = json.loads(parts[0])
        if not isinstance(header, dict):
            log.warning("dropped a %s message whose header is not an object", channel)
            return
        msg_type = header.get("msg_type", "")
        if channel == "control" and msg_type == "shutdown_request":
            self._own(self._shutdown(idents, header, parts[3]))
            return
        # The gateway answers requests, and a bad msg_type with a BadMessage error.
        answered = not isinstance(msg_type, str) or msg_type.endswith("_request")
        msg_id = header.get("msg_id")
        if channel in ("shell", "control") and answered and isinstance(msg_id, str):
            self._pending[msg_id] = (channel, idents, header)
        self._write(serialize_msg_to_ws_v1(parts, channel))

    def _own(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, frame: bytes) -> None:
        ws = self.ws
        if ws is None or ws.protocol is None:
            if len(self._backlog) >= MAX_BACKLOG:
                log.warning("dropping a message: %d are waiting for the gateway", MAX_BACKLOG)
                return
            self._backlog.append(frame)
            return
        try:
            ws.write_message(frame, binary=True)
        except WebSocketClosedError:
            self._backlog.append(frame)

    async def interrupt(self) -> None:
        try:
            await self.api.interrupt(self.kernel_id)
        except GatewayError as e:
            print(f"[kcr] interrupt failed: {e}", file=sys.stderr)

    async def _shutdown(self, idents: list[bytes], header: dict, content: bytes) -> None:
        try:
            restart = bool(json.loads(content).get("restart", False))
        except ValueError:
            restart = False
        session = self.sockets.session
        reply = session.msg("shutdown_reply", {"status": "ok", "restart": restart}, parent=header)
        self.sockets.send("control", reply, idents)
        await self.close(delete=True)
        self.on_exit(0)

    # -- gateway -> client ------------------------------------------------------------

    async def _read_loop(self, ws: WebSocketClientConnection) -> None:
        while True:
            frame = await ws.read_message()
            if frame is None:
                break
            try:
                self._deliver(frame)
            except Exception:
                log.exception("could not relay a message from the gateway")
        if self._closing or ws is not self.ws:
            return
        self.ws = None
        why = ws.close_reason or (f"code {ws.close_code}" if ws.close_code else "connection cut")
        self._own(self._reconnect(why))

    def _deliver(self, frame: bytes | str) -> None:
        if isinstance(frame, str):
            frame = frame.encode()
        channel, parts = deserialize_msg_from_ws_v1(frame)
        if channel == "iopub":
            if b'"iopub_welcome"' in parts[0] and json.loads(parts[0])["msg_type"] == (
                "iopub_welcome"
            ):
                return  # welcomes this WebSocket; ZMQ subscribers get the bridge's own
            self.sockets.send_raw("iopub", parts)
            return
        parent_id = json.loads(parts[1]).get("msg_id")
        if channel in ("shell", "control"):
            entry = self._pending.pop(parent_id, None)
        else:
            entry = self._pending.get(parent_id)
        if entry is None:
            log.debug("dropped a %s message for an unknown request %s", channel, parent_id)
            return
        self.sockets.send_raw(channel, parts, entry[1])

    async def _reconnect(self, why: str) -> None:
        log.warning(
            "kernel %s: the gateway WebSocket closed (%s); reconnecting", self.kernel_id, why
        )
        self._report_lost(why)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while not self._closing:
            try:
                await self._connect()
                self.reconnects += 1
                log.info("kernel %s: reconnected to the gateway", self.kernel_id)
                return
            except KernelGone as e:
                print(f"[kcr] the kernel is gone: {e}", file=sys.stderr)
                self._closing = True
                self.on_exit(1)
                return
            except GatewayError as e:
                if time.monotonic() + delay > deadline:
                    print(
                        f"[kcr] lost the gateway for {self.reconnect_timeout:g} s: {e}",
                        file=sys.stderr,
                    )
                    self._closing = True
                    self.on_exit(1)
                    return
                log.info("reconnect failed (%s); retrying in %.2f s", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _report_lost(self, why: str) -> None:
        """Answer every request whose reply the dropped WebSocket took with it."""
        lost, self._pending = self._pending, {}
        session = self.sockets.session
        for channel, idents, header in lost.values():
            msg_type = header.get("msg_type", "")
            text = (
                f"[kcr] the connection to the gateway dropped while {msg_type} ran ({why});"
                " its reply was lost. The kernel keeps its state; run the cell again"
                " if needed.\n"
            )
            self.sockets.send(
                "iopub", session.msg("stream", {"name": "stderr", "text": text}, parent=header)
            )
            content = {
                "status": "error",
                "ename": "ConnectionLost",
                "evalue": text.strip(),
                "traceback": [text.strip()],
            }
            if msg_type == "execute_request":
                content["execution_count"] = None
            reply = session.msg(msg_type.replace("_request", "_reply"), content, parent=header)
            self.sockets.send(channel, reply, idents)
            self.sockets.send(
                "iopub", session.msg("status", {"execution_state": "idle"}, parent=header)
            )
            print(text.strip(), file=sys.stderr)

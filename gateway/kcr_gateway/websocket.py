"""The kernel WebSocket of the gateway: Jupyter messages <-> a KernelSession.

jupyter_server's ``KernelWebsocketHandler`` accepts the socket (auth,
subprotocol negotiation, pings) and hands frames to this connection class.
Both wire formats of jupyter_server are spoken:

* legacy: JSON text frames (a message without ``channel`` goes to shell),
  or binary frames with buffers;
* ``v1.kernel.websocket.jupyter.org``: binary frames with the channel and the
  message parts laid out by offsets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    BaseKernelWebsocketConnection,
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)
from tornado.websocket import WebSocketClosedError
from traitlets import Float, Integer

from .send_buffer import SendBuffer

log = logging.getLogger("kcr.gateway.ws")

V1 = "v1.kernel.websocket.jupyter.org"
MiB = 1024 * 1024
#: Close code for a client that does not read its output (1008: policy violation).
CLOSE_TOO_SLOW = 1008


def _dumps(obj) -> bytes:
    return json.dumps(obj, default=json_default).encode()


class KCRWebsocketConnection(BaseKernelWebsocketConnection):
    """One client WebSocket attached to one kernel (a listener of its session).

    Contract: every frame the client sends becomes one call to
    :meth:`KernelSession.handle`; every message the session sends to this
    listener is written in the wire format the client negotiated. A frame
    that cannot be parsed is logged and dropped; it never closes the socket
    or touches the kernel. Writing to a socket that already closed is a
    no-op.

    Output is bounded per connection (:class:`SendBuffer`): while this client has more than
    ``max_buffer_bytes`` of output unread, the session stops reading the kernel's output
    (the kernel waits; :meth:`drained`); a client still over the limit after
    ``slow_client_timeout`` seconds, or with twice the limit unread, is disconnected with
    close code 1008 "client too slow: N MiB of output unread". The kernel keeps running and
    its other clients keep getting its output.
    """

    max_buffer_bytes = Integer(
        4 * MiB,
        config=True,
        help="Output queued for one client and not yet read by it before the kernel's output "
        "is paused for everyone; a client at twice this is disconnected at once.",
    )
    slow_client_timeout = Float(
        10.0,
        config=True,
        help="Seconds a client may keep max_buffer_bytes of output unread (the kernel's output "
        "paused) before it is disconnected with close code 1008.",
    )

    @property
    def kernel(self):
        return self.parent

    @property
    def v1(self) -> bool:
        return self.websocket_handler.selected_subprotocol == V1

    async def prepare(self) -> None:
        """Nothing to prepare: the kernel's pod is already connected."""

    async def connect(self) -> None:
        self.buffer = SendBuffer(self.max_buffer_bytes)
        handler = self.websocket_handler
        handler.set_nodelay(True)
        kernel = self.kernel
        kernel.session.add_listener(self)
        kernel.connections += 1
        kernel.touch()

    def disconnect(self) -> None:
        kernel = self.kernel
        if self in kernel.session.listeners:
            kernel.session.remove_listener(self)
            kernel.connections = max(0, kernel.connections - 1)

    def handle_incoming_message(self, incoming_msg) -> None:
        try:
            msg = self._parse(incoming_msg)
        except Exception as e:
            log.warning("kernel %s: dropped a malformed frame: %s", self.kernel.kernel_id, e)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
            log.warning("kernel %s: dropped a frame without a header", self.kernel.kernel_id)
            return
        self.kernel.session.handle(self, msg)

    def _parse(self, frame) -> dict:
        if self.v1:
            if isinstance(frame, str):
                frame = frame.encode()
            channel, parts = deserialize_msg_from_ws_v1(frame)
            header, parent, metadata, content = (json.loads(p) for p in parts[:4])
            return {
                "header": header,
                "parent_header": parent,
                "metadata": metadata,
                "content": content,
                "channel": channel,
                "buffers": parts[4:],
            }
        if isinstance(frame, bytes):
            return deserialize_binary_message(frame)
        msg = json.loads(frame)
        if isinstance(msg, dict):
            msg.setdefault("channel", "shell")
        return msg

    # KernelListener
    def send(self, channel: str, msg: dict) -> None:
        handler = self.websocket_handler
        if handler is None or handler.ws_connection is None:
            return
        try:
            if self.v1:
                parts = [
                    _dumps(msg["header"]),
                    _dumps(msg["parent_header"]),
                    _dumps(msg.get("metadata") or {}),
                    _dumps(msg["content"]),
                    *msg.get("buffers", []),
                ]
                frame, binary = serialize_msg_to_ws_v1(parts, channel), True
            elif msg.get("buffers"):
                frame, binary = serialize_binary_message(msg), True
            else:
                frame, binary = json.dumps(msg, default=json_default), False
            self.buffer.track(len(frame), handler.write_message(frame, binary=binary))
        except WebSocketClosedError:
            self.disconnect()
            return
        if self.buffer.unsent > 2 * self.buffer.limit:
            self.too_slow()

    # PacedListener
    def drained(self) -> Awaitable[None] | None:
        """``None`` while this client keeps up; else an awaitable that ends when it has read
        enough, or when it was disconnected for being too slow."""
        if not self.buffer.full or self.websocket_handler.ws_connection is None:
            return None
        return self._wait_for_room()

    async def _wait_for_room(self) -> None:
        if not await self.buffer.room(self.slow_client_timeout):
            self.too_slow()

    def too_slow(self) -> None:
        """Disconnect this client: it does not read its output."""
        handler = self.websocket_handler
        if handler.ws_connection is None:
            return
        reason = f"client too slow: {self.buffer.unsent / MiB:.1f} MiB of output unread"
        log.warning("kernel %s: %s; disconnecting it", self.kernel.kernel_id, reason)
        self.disconnect()
        handler.close(CLOSE_TOO_SLOW, reason)

    def handle_outgoing_message(self, stream: str, outgoing_msg: list) -> None:
        """Unused: messages come from the KernelSession, not from ZMQ streams."""

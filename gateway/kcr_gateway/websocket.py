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

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    BaseKernelWebsocketConnection,
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)
from tornado.websocket import WebSocketClosedError

log = logging.getLogger("kcr.gateway.ws")

V1 = "v1.kernel.websocket.jupyter.org"


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
    """

    @property
    def kernel(self):
        return self.parent

    @property
    def v1(self) -> bool:
        return self.websocket_handler.selected_subprotocol == V1

    async def prepare(self) -> None:
        """Nothing to prepare: the kernel's pod is already connected."""

    async def connect(self) -> None:
        handler = self.websocket_handler
        handler.set_nodelay(True)
        kernel = self.kernel
        kernel.session.add_listener(self)
        kernel.session.welcome(self)
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
                handler.write_message(serialize_msg_to_ws_v1(parts, channel), binary=True)
            elif msg.get("buffers"):
                handler.write_message(serialize_binary_message(msg), binary=True)
            else:
                handler.write_message(json.dumps(msg, default=json_default))
        except WebSocketClosedError:
            self.disconnect()

    def handle_outgoing_message(self, stream: str, outgoing_msg: list) -> None:
        """Unused: messages come from the KernelSession, not from ZMQ streams."""

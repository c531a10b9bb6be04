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
import resource
from collections.abc import Awaitable

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    BaseKernelWebsocketConnection,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)
from tornado.websocket import WebSocketClosedError
from traitlets import Float, Integer

from kcr_kernels.message_validation import BadMessage, error_reply, validate

from .send_buffer import SendBuffer
from .ws_frames import FrameError, decode
from .ws_limits import FrameRate, RejectLog, WebSocketSlots

log = logging.getLogger("kcr.gateway.ws")

POLICY = 1008  # WebSocket close code: the client broke a limit

V1 = "v1.kernel.websocket.jupyter.org"
MiB = 1024 * 1024
#: Close code for a client that does not read its output (1008: policy violation).
CLOSE_TOO_SLOW = 1008


def _dumps(obj) -> bytes:
    return json.dumps(obj, default=json_default).encode()


class KCRWebsocketConnection(BaseKernelWebsocketConnection):
    """One client WebSocket attached to one kernel (a listener of its session).

    Contract: every frame the client sends is decoded with its sizes checked
    first (:mod:`.ws_frames`), its message type-checked
    (:mod:`kcr_kernels.message_validation`), and only then becomes one call to
    :meth:`KernelSession.handle`; every message the session sends to this
    listener is written in the wire format the client negotiated. Writing to
    a socket that already closed is a no-op.

    Incoming limits (each rejection is logged, see :class:`.ws_limits.RejectLog`):

    * a frame that cannot be decoded closes the socket: 1003 (a text frame on
      v1) or 1007 (bad offsets, counts or JSON), with the reason;
    * a frame over ``websocket_max_message_size`` is closed with 1009 by
      tornado before it is buffered;
    * a message with a bad field gets a ``BadMessage`` error reply when it
      can be addressed (:func:`~kcr_kernels.message_validation.error_reply`),
      else it is dropped; the socket stays open;
    * more than ``max_connections_per_kernel`` sockets on one kernel,
      ``max_connections_per_identity`` of one identity or ``max_connections`` on the
      gateway are refused before the upgrade, with HTTP 429 and a JSON reason
      (:meth:`slots`, :class:`.ws_limits.WebSocketSlots`);
    * frames faster than ``max_frames_per_second`` (after a burst of
      ``frame_burst``) close the socket with 1008 and the limit in the reason;
    * a shell request while the kernel already has ``max_queued_requests``
      requests or ``max_queued_bytes`` waiting gets a ``KernelQueueFull``
      error reply (or is dropped when it cannot be addressed).

    Output is bounded per connection (:class:`SendBuffer`): while this client has more than
    ``max_buffer_bytes`` of output unread, the session stops reading the kernel's output
    (the kernel waits; :meth:`drained`); a client still over the limit after
    ``slow_client_timeout`` seconds, or already over it with twice the limit unread, is
    disconnected with close code 1008 "client too slow: N MiB of output unread". The kernel
    keeps running and its other clients keep getting its output.
    """

    max_connections_per_kernel = Integer(
        64,
        config=True,
        help="Most WebSockets open (or opening) on one kernel; one more is refused before "
        "the upgrade with HTTP 429 (0: any).",
    )
    max_connections_per_identity = Integer(
        256,
        config=True,
        help="Most kernel WebSockets one identity (the authenticated user; without "
        "authentication, the client's address) may have open; one more is refused before "
        "the upgrade with HTTP 429 (0: any).",
    )
    max_connections = Integer(
        None,
        allow_none=True,
        config=True,
        help="Most kernel WebSockets open on the whole gateway; one more is refused before "
        "the upgrade with HTTP 429 (0: any). Default: half the gateway's open-file limit "
        "(RLIMIT_NOFILE), at most 4096.",
    )
    max_frames_per_second = Float(
        1000.0,
        config=True,
        help="Sustained frames per second one WebSocket may send; a faster client is "
        "closed with code 1008 once frame_burst is used up (0: no limit).",
    )
    frame_burst = Integer(
        5000, config=True, help="Frames a WebSocket may send at once above max_frames_per_second."
    )
    max_queued_requests = Integer(
        2000,
        config=True,
        help="Most shell requests waiting on one kernel; more get a KernelQueueFull error "
        "reply (0: any).",
    )
    max_queued_bytes = Integer(
        64 * 1024 * 1024,
        config=True,
        help="Most bytes of shell requests waiting on one kernel; more get a KernelQueueFull "
        "error reply (0: any).",
    )

    _closing = False  # set once this side closed the socket: later frames are ignored
    _rejected: RejectLog | None = None  # set by connect()

    max_buffer_bytes = Integer(
        4 * MiB,
        config=True,
        help="Output queued for one client and not yet read by it before the kernel's output "
        "is paused for everyone; a client already over this with twice it unread is "
        "disconnected at once.",
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

    @classmethod
    def slots(cls, config) -> WebSocketSlots:
        """The gateway-wide WebSocket counter, with the caps configured for this class."""
        limits = cls(config=config)
        total = limits.max_connections
        if total is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            total = 4096 if soft == resource.RLIM_INFINITY else max(1, min(4096, soft // 2))
        return WebSocketSlots(
            limits.max_connections_per_kernel, limits.max_connections_per_identity, total
        )

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
        self._rejected = RejectLog(log, f"kernel {kernel.kernel_id}: ")
        self._rate = FrameRate(self.max_frames_per_second, self.frame_burst)
        self._closing = False
        kernel.session.add_listener(self)
        kernel.session.welcome(self)
        kernel.connections += 1
        kernel.touch()

    def disconnect(self) -> None:
        kernel = self.kernel
        if self in kernel.session.listeners:
            kernel.session.remove_listener(self)
            kernel.connections = max(0, kernel.connections - 1)
        if self._rejected is not None:
            self._rejected.summary()

    # -- incoming (limits, decoding, validation) ---------------------------------

    def handle_incoming_message(self, incoming_msg) -> None:
        """One client frame → at most one :meth:`KernelSession.handle` call; never raises."""
        if self._closing:
            return
        try:
            self._take(incoming_msg)
        except Exception:  # a bug here must not leave the socket half-handled
            log.exception("kernel %s: a frame could not be handled", self.kernel.kernel_id)
            self._close(1011, "the gateway could not handle this frame")

    def _take(self, incoming_msg) -> None:
        if not self._rate.take():
            self._close(POLICY, f"more than {self.max_frames_per_second:g} frames per second")
            return
        try:
            msg = decode(incoming_msg, self.v1)
        except FrameError as e:
            self._close(e.code, e.reason)
            return
        kernel_id = self.kernel.kernel_id
        try:
            validate(msg, kernel_id)
        except BadMessage as e:
            self._answer_error(msg, e.ename, str(e))
            return
        if self._queue_full(msg, len(incoming_msg)):
            return
        self.kernel.session.handle(self, msg, size=len(incoming_msg))

    def _queue_full(self, msg: dict, size: int) -> bool:
        """True (and the request answered) when the kernel's shell queue is at its limit."""
        msg_type = msg["header"]["msg_type"]
        if msg["channel"] != "shell" or msg_type in ("kernel_info_request", "interrupt_request"):
            return False  # answered at once, never queued
        count, queued_bytes = self.kernel.session.queued
        too_many = self.max_queued_requests and count >= self.max_queued_requests
        too_big = self.max_queued_bytes and queued_bytes + size > self.max_queued_bytes
        if not (too_many or too_big):
            return False
        evalue = (
            f"the kernel already has {count} requests ({queued_bytes} bytes) waiting "
            f"(limits: {self.max_queued_requests} requests, {self.max_queued_bytes} bytes); "
            "wait for replies before sending more"
        )
        self._answer_error(msg, "KernelQueueFull", evalue)
        return True

    def _answer_error(self, msg, ename: str, evalue: str) -> None:
        """Answer ``msg`` with an error reply, or drop it; log it either way."""
        reply = error_reply(msg, ename, evalue)
        if reply is None:
            self._rejected("dropped a message (no reply can be addressed): %s: %s", ename, evalue)
            return
        self._rejected("refused %s: %s: %s", reply.parent.get("msg_type", "?"), ename, evalue)
        session = self.kernel.session
        idle = session.idle  # like a control request: a status pair only while nothing runs
        if idle:
            session.publish("status", {"execution_state": "busy"}, reply.parent)
        session.reply(self, reply.channel, reply.msg_type, reply.content, reply.parent)
        if idle:
            session.publish("status", {"execution_state": "idle"}, reply.parent)

    def _close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` and ``reason``; later frames are ignored."""
        self._closing = True
        self._rejected("closed a WebSocket (%d): %s", code, reason)
        handler = self.websocket_handler
        if handler is not None and handler.ws_connection is not None:
            handler.close(code, reason)

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
            backlog = self.buffer.unsent  # unread before this frame
            self.buffer.track(len(frame), handler.write_message(frame, binary=binary))
        except WebSocketClosedError:
            self.disconnect()
            return
        # One big message (an 8 MB widget state) to a client that keeps up is fine; a client
        # already over the limit that keeps falling behind is not.
        if backlog > self.buffer.limit and self.buffer.unsent > 2 * self.buffer.limit:
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

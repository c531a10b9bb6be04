"""The ZMQ side of the bridge kernel: the five sockets of a Jupyter connection file.

jupyter_client speaks to kernels only over ZMQ. :class:`KernelSockets` binds
the sockets named in a connection file, checks and signs every message with
jupyter_client's :class:`~jupyter_client.session.Session` (the connection
file's key and signature scheme), echoes heartbeats, welcomes iopub
subscribers, and hands each verified client message to a callback. It knows
nothing of what serves the kernel.

iopub is an XPUB socket, as in ipykernel 7: every subscription a client makes
is answered with an ``iopub_welcome`` message (JEP 65, content
``{"subscription": topic}``), so a client knows its iopub connection is live
without polling ``kernel_info``. Unlike ipykernel, the socket is verbose
(``XPUB_VERBOSE``): a second client subscribing to the same topic is welcomed
too (the welcome goes to every subscriber of that topic; clients ignore
welcomes they did not wait for). A subscriber is always welcomed before any
other iopub message reaches it: pending subscriptions are answered before
each iopub send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio
from jupyter_client.session import DELIM, Session

log = logging.getLogger("kcr.bridge.zmq")

#: Channels the client sends requests on (ROUTER sockets).
REQUEST_CHANNELS = ("shell", "control", "stdin")

#: Called with (channel, ZMQ identities, raw message parts) for every verified
#: client message. ``parts`` are the signed frames after the signature:
#: header, parent header, metadata, content (JSON bytes), then buffers.
RawHandler = Callable[[str, list[bytes], list[bytes]], None]


class ConnectionFileError(ValueError):
    """The connection file is missing, unreadable or lacks a field."""


def read_connection_file(path: str | Path) -> dict:
    """The connection file as a dict, with a clear error for every way it can be wrong."""
    try:
        info = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConnectionFileError(f"connection file {path} does not exist")
    except (OSError, ValueError) as e:
        raise ConnectionFileError(f"connection file {path} cannot be read: {e}")
    missing = [
        k
        for k in ("ip", "transport", "shell_port", "iopub_port", "stdin_port", "control_port")
        if k not in info
    ]
    if "hb_port" not in info:
        missing.append("hb_port")
    if missing:
        raise ConnectionFileError(f"connection file {path} lacks {', '.join(missing)}")
    return info


class KernelSockets:
    """Shell, control, stdin (ROUTER), iopub (XPUB) and heartbeat (REP) of one kernel.

    Contract:

    * :meth:`bind` binds every socket at once (so a port clash fails the
      start) and starts the heartbeat echo; client messages are read only
      after :meth:`start_reading`, so requests sent while the kernel is still
      starting wait in ZMQ instead of getting an early answer. iopub
      subscriptions are answered (``iopub_welcome``) from :meth:`bind` on.
    * Messages whose signature does not match are dropped with a warning.
    * :meth:`send` signs a message dict (as built by ``Session.msg``) and
      writes it; :meth:`send_raw` signs already-serialized parts. Both are
      no-ops after :meth:`close`.
    """

    def __init__(self, connection_info: dict, on_message: RawHandler):
        self.info = connection_info
        key = connection_info.get("key", "")
        self.session = Session(
            key=key.encode() if isinstance(key, str) else key,
            signature_scheme=connection_info.get("signature_scheme", "hmac-sha256"),
            username="kcr",
        )
        self.on_message = on_message
        self.context = zmq.asyncio.Context()
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    def _address(self, port: int) -> str:
        transport = self.info.get("transport", "tcp")
        ip = self.info["ip"]
        if transport == "ipc":
            return f"ipc://{ip}-{port}"
        return f"{transport}://{ip}:{port}"

    def bind(self) -> None:
        kinds = {
            "shell": zmq.ROUTER,
            "control": zmq.ROUTER,
            "stdin": zmq.ROUTER,
            "iopub": zmq.XPUB,
            "hb": zmq.REP,
        }
        for channel, kind in kinds.items():
            sock = self.context.socket(kind)
            sock.linger = 1000
            if kind == zmq.ROUTER:
                # Replies to a client that went away are dropped, never block.
                sock.router_handover = 1
            if kind == zmq.XPUB:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            port = self.info[f"{channel}_port"]
            try:
                sock.bind(self._address(port))
            except zmq.ZMQError as e:
                sock.close(0)
                self.close()
                raise OSError(f"cannot bind the {channel} socket on {self._address(port)}: {e}")
            self.sockets[channel] = sock
        # iopub is written and its subscriptions read synchronously (a message is sent at
        # once, a subscription answered before the next send); see _welcome_subscribers.
        self._iopub = zmq.Socket.shadow(self.sockets["iopub"].underlying)
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._tasks.append(asyncio.create_task(self._watch_subscriptions()))

    def start_reading(self) -> None:
        for channel in REQUEST_CHANNELS:
            self._tasks.append(asyncio.create_task(self._read(channel)))

    async def _heartbeat(self) -> None:
        sock = self.sockets["hb"]
        with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
            while True:
                frames = await sock.recv_multipart()
                await sock.send_multipart(frames)

    async def _watch_subscriptions(self) -> None:
        sock = self.sockets["iopub"]
        with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
            while True:
                await sock.poll(flags=zmq.POLLIN)
                self._welcome_subscribers()

    def _welcome_subscribers(self) -> None:
        """Answer every subscription waiting on the XPUB socket with an ``iopub_welcome``."""
        sock = self._iopub
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not frame or frame[0] != 1:  # b"\x00" + topic: an unsubscription
                continue
            try:
                topic = frame[1:].decode()
            except UnicodeDecodeError:
                continue
            welcome = self.session.msg("iopub_welcome", {"subscription": topic})
            welcome["parent_header"] = {}
            self.session.send(sock, welcome, ident=frame[1:] or None)
            log.debug("welcomed an iopub subscriber (topic %r)", topic)

    async def _read(self, channel: str) -> None:
        sock = self.sockets[channel]
        while True:
            try:
                frames = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                idents, parts = self.session.feed_identities(frames, copy=True)
                if len(parts) < 5:
                    raise ValueError(f"a message has {len(parts)} frames, at least 5 are needed")
                if self.session.auth is not None:
                    expected = self.session.sign(parts[1:5])
                    if not _compare(expected, parts[0]):
                        raise ValueError("invalid signature")
            except Exception as e:
                log.warning("dropped a %s message: %s", channel, e)
                continue
            try:
                self.on_message(channel, idents, parts[1:])
            except Exception:
                log.exception("handling a %s message failed", channel)

    def _socket(self, channel: str) -> zmq.Socket:
        if channel == "iopub":
            # Welcome new subscribers first, and answer subscriptions the send let in.
            self._welcome_subscribers()
            return self._iopub
        return self.sockets[channel]

    def send(self, channel: str, msg: dict, idents: list[bytes] | None = None) -> None:
        if self._closed or channel not in self.sockets:
            return
        self.session.send(
            self._socket(channel), msg, ident=idents or None, buffers=msg.get("buffers") or None
        )
        if channel == "iopub":
            self._welcome_subscribers()

    def send_raw(self, channel: str, parts: list[bytes], idents: list[bytes] | None = None) -> None:
        """Sign and send serialized parts (header, parent, metadata, content, *buffers)."""
        if self._closed or channel not in self.sockets:
            return
        signature = self.session.sign(parts[:4])
        frames = [*(idents or []), DELIM, signature, *parts]
        try:
            self._socket(channel).send_multipart(frames, copy=False)
        except zmq.ZMQError as e:
            log.warning("could not send on %s: %s", channel, e)
        if channel == "iopub":
            self._welcome_subscribers()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=200)
        self.context.term()


def _compare(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)

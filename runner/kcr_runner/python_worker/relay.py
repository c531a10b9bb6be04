"""The relay: the worker protocol (pipes to the runner) on one side, ipykernel's ZMQ on the other.

The runner never touches the kernel's sockets: they are ``ipc`` files in a private folder of the
sandbox's /tmp, which user code controls. The relay lives inside the sandbox with the kernel,
as a thread of the kernel's own process (``kernel_pid=None``, see :mod:`.__main__`) or as its
parent process (``kernel_pid``: the child to watch), is its only client, and does these jobs:

* requests: each runner request becomes one Jupyter message (``execute`` ->
  ``execute_request`` on shell, ``debug_request`` on control, ...); the relay remembers which
  msg_id it sent for which request id, and every iopub/stdin message whose parent is that
  msg_id becomes an event with the request's id. Messages whose parent is no request in flight
  (a widget callback, a thread printing between cells, a debugger event) become events with
  ``"id": null``. ipykernel's own ``status`` messages are dropped (the gateway owns busy/idle)
  but used: a shell request is over when its reply *and* its iopub ``idle`` have arrived, so
  every output is sent before the reply (comm messages, which have no reply, end at idle).
* interrupts: a runner ``interrupt`` becomes ``kcr_interrupt_request`` naming the execute in
  flight; the kernel interrupts it, or marks it to end before running (never lost).
* output caps: stream text beyond ``max_output_bytes`` per cell is dropped after one notice.
* back-pressure: the pipe to the runner is non-blocking; while more than
  :data:`OUT_HIGH_WATER` bytes wait for the runner, the relay stops reading the kernel's iopub
  (whose queue is bounded and blocks the kernel's output, see :mod:`.iopub`) but keeps serving
  interrupts, control and stdin.
* death (parent-process mode only): when the kernel dies, the relay dies the same way (same
  signal or exit code), so the runner reports "the kernel process died (killed by signal
  SIGKILL ...)"; in-process, the kernel's death is the worker's own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..worker_protocol import decode, encode, split_blob
from . import wire

#: Runner op -> Jupyter request msg_type (shell channel).
SHELL_OPS = {
    "execute": "execute_request",
    "complete": "complete_request",
    "inspect": "inspect_request",
    "is_complete": "is_complete_request",
    "history": "history_request",
    "comm_info": "comm_info_request",
    "kernel_info": "kernel_info_request",
    "snapshot": "kcr_snapshot_request",
    "restore": "kcr_restore_request",
    # No reply: over when the kernel reports idle for them.
    "comm_open": "comm_open",
    "comm_msg": "comm_msg",
    "comm_close": "comm_close",
}
NO_REPLY_OPS = frozenset({"comm_open", "comm_msg", "comm_close"})
#: Runner control op -> Jupyter control msg_type (answered even while a cell runs).
CONTROL_OPS = {"set_env": "kcr_set_env_request", "debug_request": "debug_request"}
#: How long a request whose kernel said idle may still wait for its reply on the shell socket.
REPLY_GRACE = 2.0
#: Bytes waiting to be written to the runner above which the relay stops reading iopub.
OUT_HIGH_WATER = 1024 * 1024
#: iopub messages queued in the relay's SUB socket before the kernel's side fills up.
IOPUB_RCVHWM = 16
#: iopub messages handled per loop turn (so a flood cannot starve interrupts and replies).
IOPUB_BATCH = 64
#: iopub messages whose content is only passed on: forwarded as the kernel's JSON bytes.
_INSPECTED = frozenset({"status", "iopub_welcome", "execute_input", "stream"})


@dataclass
class Pending:
    """One request the relay sent to the kernel and has not answered the runner for."""

    request_id: str
    op: str
    reply: dict[str, Any] | None = None
    idle: bool = False
    idle_at: float = 0.0
    control: bool = False
    stream_chars: int = 0
    truncated: bool = False
    input_parent: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Relay:
    """Serves the worker protocol for one kernel process until either side goes away."""

    def __init__(
        self,
        proto_in: int,
        proto_out: int,
        connection: dict[str, Any],
        kernel_pid: int | None,
        options: dict[str, Any],
    ):
        """``kernel_pid``: the kernel's process when it is a child to watch; ``None`` when the
        relay is a thread of the kernel's own process (its death is the worker's death)."""
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.kernel_pid = kernel_pid
        self.max_output = int(options.get("max_output_bytes", 10 * 1024 * 1024))
        self.max_state = int(options.get("max_state_bytes", 1 << 30))
        if connection.get("key"):
            raise ValueError("the relay speaks unsigned messages: the connection key must be empty")
        self.writer = wire.Writer()
        self.context = zmq.Context()
        base = f"{connection['transport']}://{connection['ip']}"

        def url(port: int) -> str:
            return f"{base}-{port}" if connection["transport"] == "ipc" else f"{base}:{port}"

        ident = self.writer.session.encode()
        self.shell = self._socket(zmq.DEALER, url(connection["shell_port"]), ident)
        self.control = self._socket(zmq.DEALER, url(connection["control_port"]), ident)
        self.stdin = self._socket(zmq.DEALER, url(connection["stdin_port"]), ident)
        self.iopub = self._socket(zmq.SUB, url(connection["iopub_port"]), None, IOPUB_RCVHWM)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.pending: dict[str, Pending] = {}  # Jupyter msg_id -> request
        self.execute_msg_id: str | None = None  # the execute in flight
        self.execution_count = 0
        self._inbuf = bytearray()
        self._out = bytearray()  # bytes for the runner not yet written (non-blocking pipe)
        os.set_blocking(proto_out, False)
        self._blob_wanted: tuple[dict[str, Any], int] | None = None
        self._pidfd: int | None = None
        if kernel_pid is not None:
            with contextlib.suppress(AttributeError, OSError):
                self._pidfd = os.pidfd_open(kernel_pid)

    def _socket(self, kind: int, url: str, ident: bytes | None, hwm: int = 0) -> zmq.Socket:
        sock = self.context.socket(kind)
        if hwm:
            sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the kernel binds a moment after we connect
        if ident is not None:
            sock.setsockopt(zmq.IDENTITY, ident)
        sock.connect(url)
        return sock

    # -- to the runner -------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Queue one message for the runner; :meth:`flush` writes what the loop turn queued in
        one go (fewer wake-ups for the runner when a cell's outputs come in a burst)."""
        message, blob = split_blob(message)
        self._out += encode(message)
        if blob is not None:
            self._out += blob

    def flush(self) -> None:
        """Write what the pipe takes now; the rest waits for the pipe to be writable."""
        while self._out:
            try:
                written = os.write(self.proto_out, self._out)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:  # the runner is gone
                self.stop_kernel_and_exit(0)
            del self._out[:written]

    def flush_all(self) -> None:
        """Write everything queued, waiting for the pipe (at start-up and before dying)."""
        os.set_blocking(self.proto_out, True)
        try:
            self.flush()
        finally:
            os.set_blocking(self.proto_out, False)

    def event(
        self,
        request_id: str | None,
        event: str,
        content: dict[str, Any],
        buffers=None,
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """One event; ``buffers`` (binary parts of a comm message) travel as base64 strings,
        an event of no request carries its kernel-side ``parent`` header when it has one, and
        the message's own ``metadata`` travels when it is not empty (ipywidgets puts its
        protocol version there: a ``comm_open`` without it is refused by the front end)."""
        message: dict[str, Any] = {
            "type": "event",
            "id": request_id,
            "event": event,
            "content": content,
        }
        if buffers:
            message["buffers"] = [base64.b64encode(bytes(b)).decode() for b in buffers]
        if parent:
            message["parent"] = parent
        if metadata:
            message["metadata"] = metadata
        self.send(message)

    def raw_event(
        self,
        request_id: str | None,
        event: str,
        content: bytes,
        buffers=None,
        parent: dict[str, Any] | None = None,
        metadata: bytes | None = None,
    ) -> None:
        """:meth:`event` with ``content`` (and ``metadata``) already JSON (the kernel's
        bytes, one line): a display, result or comm message is passed on without being
        parsed and encoded again."""
        head = encode({"type": "event", "id": request_id, "event": event})[:-2]
        tail = b""
        if buffers:
            encoded = [base64.b64encode(bytes(b)).decode() for b in buffers]
            tail += b',"buffers":' + encode(encoded)[:-1]
        if parent:
            tail += b',"parent":' + encode(parent)[:-1]
        if metadata:
            tail += b',"metadata":' + bytes(metadata)
        self._out += head + b',"content":' + content + tail + b"}\n"

    # -- start-up ------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ask for kernel_info until the kernel answers on shell and publishes on iopub.

        The iopub check makes sure our subscription is live, so no output is lost later.
        """
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            msg_id = self._send(self.shell, self.writer.header("kernel_info_request"), {})
            seen_iopub = False
            round_end = time.monotonic() + 0.5
            while time.monotonic() < round_end and not (info and seen_iopub):
                self._check_kernel_alive()
                for sock, _ in poller.poll(50):
                    msg = self._recv(sock)
                    if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    if sock is self.shell:
                        info = msg["content"]
                    else:
                        seen_iopub = True
            if info and seen_iopub:
                info.pop("status", None)
                return info
        raise TimeoutError(f"the kernel did not answer kernel_info within {timeout} s")

    # -- main loop -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poller = zmq.Poller()
        for sock in (self.iopub, self.shell, self.control, self.stdin):
            poller.register(sock, zmq.POLLIN)
        poller.register(self.proto_in, zmq.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, zmq.POLLIN)
        reading_iopub, writing = True, False
        while True:
            # Back-pressure: no iopub reading while the runner has not taken our output.
            if reading_iopub != (len(self._out) < OUT_HIGH_WATER):
                reading_iopub = not reading_iopub
                poller.register(self.iopub, zmq.POLLIN if reading_iopub else 0)
            if writing != bool(self._out):
                writing = not writing
                poller.register(self.proto_out, zmq.POLLOUT if writing else 0)
            timeout = self._next_timeout()
            events = dict(poller.poll(timeout))
            # iopub first: outputs of a request are sent before its reply.
            if self.iopub in events:
                self._drain(self.iopub, self.on_iopub, IOPUB_BATCH)
            if self.shell in events:
                self._drain(self.shell, self.on_shell_reply)
            if self.control in events:
                self._drain(self.control, self.on_control_reply)
            if self.stdin in events:
                self._drain(self.stdin, self.on_stdin)
            if self.proto_in in events:
                self.read_runner()
            if self.kernel_pid is not None and (self._pidfd is None or self._pidfd in events):
                self._check_kernel_alive()
            self._expire_idle_without_reply()
            self.flush()

    def _next_timeout(self) -> int | None:
        waits = [p.idle_at + REPLY_GRACE for p in self.pending.values() if p.idle and not p.reply]
        if self.kernel_pid is not None and self._pidfd is None:
            waits.append(time.monotonic() + 0.5)
        if not waits:
            return None
        return max(int((min(waits) - time.monotonic()) * 1000) + 1, 0)

    def _send(
        self,
        sock: zmq.Socket,
        header: dict[str, Any],
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        sock.send_multipart(self.writer.frames(header, content, parent, buffers, metadata))
        return header["msg_id"]

    def _recv(self, sock: zmq.Socket, lazy: bool = False) -> dict[str, Any] | None:
        """One message if one is waiting (None otherwise); a malformed one is logged and
        skipped. ``lazy``: the content stays JSON bytes (:func:`wire.parse_lazy`)."""
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # no zmq.Again exception per drain
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                return wire.parse_lazy(frames) if lazy else wire.parse(frames)
            except (ValueError, UnicodeDecodeError) as exc:
                print(f"kcr relay: bad kernel message ignored: {exc}", file=sys.stderr)
        return None

    def _drain(self, sock: zmq.Socket, handler, limit: int = 0) -> None:
        lazy = sock is self.iopub
        count = 0
        while (msg := self._recv(sock, lazy)) is not None:
            handler(msg)
            count += 1
            if limit and (count >= limit or len(self._out) >= OUT_HIGH_WATER):
                return

    # -- from the kernel ---------------------------------------------------------------------
    def _pending_for(self, msg: dict[str, Any]) -> Pending | None:
        return self.pending.get(msg["parent_header"].get("msg_id"))

    def on_iopub(self, msg: dict[str, Any]) -> None:
        """One iopub message; its ``content`` may still be JSON bytes (:func:`wire.parse_lazy`)."""
        msg_type = msg["header"]["msg_type"]
        content = msg["content"]
        pending = self._pending_for(msg)
        if isinstance(content, (bytes, bytearray, memoryview)):
            if msg_type not in _INSPECTED:
                ours = pending is not None and not pending.control
                request_id = pending.request_id if ours else None
                parent = None if request_id is not None else msg.get("parent_header")
                self.raw_event(
                    request_id,
                    msg_type,
                    bytes(content),
                    msg.get("buffers"),
                    parent,
                    msg.get("metadata"),
                )
                return
            content = json.loads(content)
            if isinstance(msg.get("metadata"), (bytes, bytearray, memoryview)):
                msg["metadata"] = json.loads(msg["metadata"])
        if msg_type == "status":
            if pending is not None and content.get("execution_state") == "idle":
                pending.idle = True
                pending.idle_at = time.monotonic()
                self._maybe_finish(msg["parent_header"]["msg_id"])
            return
        if msg_type == "iopub_welcome":
            return
        request_id = pending.request_id if pending is not None and not pending.control else None
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count", self.execution_count)
        elif msg_type == "stream" and pending is not None:
            content = self._cap_stream(pending, content)
            if content is None:
                return
        self.event(
            request_id,
            msg_type,
            content,
            msg.get("buffers"),
            None if request_id is not None else msg.get("parent_header"),
            msg.get("metadata"),
        )
        if pending is not None and pending.truncated and not pending.extra.get("noticed"):
            pending.extra["noticed"] = True
            notice = (
                f"\n[kcr] output truncated: this cell wrote more than {self.max_output} "
                "characters of stream output; the rest is dropped.\n"
            )
            self.event(request_id, "stream", {"name": "stderr", "text": notice})

    def _cap_stream(self, pending: Pending, content: dict[str, Any]) -> dict[str, Any] | None:
        if pending.truncated:
            return None
        text = str(content.get("text", ""))
        room = self.max_output - pending.stream_chars
        if len(text) > room:
            text = text[: max(room, 0)]
            pending.truncated = True
        pending.stream_chars += len(text)
        if not text:
            return None
        return {**content, "text": text}

    def on_shell_reply(self, msg: dict[str, Any]) -> None:
        msg_id = msg["parent_header"].get("msg_id")
        pending = self.pending.get(msg_id)
        if pending is None:
            return
        content = dict(msg["content"])
        if pending.op == "snapshot" and content.get("status") == "ok":
            buffers = msg.get("buffers") or [b""]
            content["blob"] = bytes(memoryview(buffers[0]))
        if pending.op == "execute" and "execution_count" in content:
            self.execution_count = content["execution_count"]
        msg_type = msg["header"]["msg_type"].replace("kcr_", "")
        pending.reply = {"msg_type": msg_type, "content": content}
        self._maybe_finish(msg_id)

    def on_control_reply(self, msg: dict[str, Any]) -> None:
        msg_id = msg["parent_header"].get("msg_id")
        pending = self.pending.pop(msg_id, None)
        if pending is None:
            return
        msg_type = msg["header"]["msg_type"].replace("kcr_", "")
        self.send(
            {
                "type": "reply",
                "id": pending.request_id,
                "msg_type": msg_type,
                "content": msg["content"],
            }
        )

    def on_stdin(self, msg: dict[str, Any]) -> None:
        if msg["header"]["msg_type"] != "input_request":
            return
        pending = self._pending_for(msg)
        if pending is None:
            return
        pending.input_parent = msg["header"]
        self.event(pending.request_id, "input_request", msg["content"])

    def _maybe_finish(self, msg_id: str) -> None:
        pending = self.pending.get(msg_id)
        if pending is None or not pending.idle:
            return
        if pending.op in NO_REPLY_OPS:
            pending.reply = {"msg_type": "comm_reply", "content": {"status": "ok"}}
        if pending.reply is None:
            return
        del self.pending[msg_id]
        if msg_id == self.execute_msg_id:
            self.execute_msg_id = None
        self.send({"type": "reply", "id": pending.request_id, **pending.reply})

    def _expire_idle_without_reply(self) -> None:
        now = time.monotonic()
        for msg_id, pending in list(self.pending.items()):
            if pending.idle and pending.reply is None and now - pending.idle_at > REPLY_GRACE:
                evalue = f"the kernel finished {pending.op} without sending a reply"
                content: dict[str, Any] = {
                    "status": "error",
                    "ename": "KernelError",
                    "evalue": evalue,
                    "traceback": [evalue],
                }
                if pending.op == "execute":
                    content.update(
                        execution_count=self.execution_count, payload=[], user_expressions={}
                    )
                pending.reply = {"msg_type": f"{pending.op}_reply", "content": content}
                self._maybe_finish(msg_id)

    # -- from the runner -----------------------------------------------------------------------
    def read_runner(self) -> None:
        try:
            data = os.read(self.proto_in, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stop_kernel_and_exit(0)
        self._inbuf += data
        while True:
            if self._blob_wanted is not None:
                message, size = self._blob_wanted
                if len(self._inbuf) < size:
                    return
                message["content"]["blob"] = bytes(self._inbuf[:size])
                del self._inbuf[:size]
                self._blob_wanted = None
                self.on_runner(message)
                continue
            end = self._inbuf.find(b"\n")
            if end < 0:
                return
            line = bytes(self._inbuf[:end])
            del self._inbuf[: end + 1]
            try:
                message = decode(line)
            except ValueError as exc:
                print(f"kcr relay: bad protocol line ignored: {exc}", file=sys.stderr)
                continue
            size = message.pop("binary", 0)
            if size:
                message.setdefault("content", {})
                self._blob_wanted = (message, size)
                continue
            self.on_runner(message)

    def on_runner(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "request":
            self.on_request(message)
        elif kind == "control":
            self.on_control(message)
        elif kind == "interrupt":
            self.on_interrupt(message)
        elif kind == "input_reply":
            self.on_input_reply(message)

    def on_request(self, message: dict[str, Any]) -> None:
        request_id, op = message.get("id"), message.get("op")
        content = dict(message.get("content") or {})
        msg_type = SHELL_OPS.get(op)
        if msg_type is None:
            error = {"status": "error", "ename": "ValueError", "evalue": f"unknown op {op!r}"}
            self.send({"type": "reply", "id": request_id, "msg_type": "error", "content": error})
            return
        buffers = _decode_buffers(content.pop("buffers", None))
        if op == "execute":
            # The gateway owns stop_on_error; a kernel-side abort could swallow the next cell.
            content["stop_on_error"] = False
        elif op == "history":
            # ipykernel needs every field jupyter_client sends; fill the protocol's defaults.
            content.setdefault("output", False)
            content.setdefault("raw", True)
            content.setdefault("hist_access_type", "tail")
        elif op == "snapshot":
            content["max_bytes"] = self.max_state
        elif op == "restore":
            buffers = [content.pop("blob", b"")]
        jheader = self.writer.header(msg_type)
        header = message.get("header")
        if isinstance(header, dict) and isinstance(header.get("msg_id"), str):
            # The client's own header: the kernel's get_parent() is the client's request, so
            # what keys on msg_ids (the Output widget's capture, update_display) just works.
            if header["msg_id"] not in self.pending:
                jheader = {**jheader, **header, "msg_type": msg_type}
        msg_id = jheader["msg_id"]
        self.pending[msg_id] = Pending(request_id, op)
        if op == "execute":
            self.execute_msg_id = msg_id
            if content.get("silent"):
                # ipykernel publishes no execute_input for silent cells; the runner protocol
                # always starts an execute with one (the gateway does not echo it).
                code = content.get("code", "")
                self.event(
                    request_id,
                    "execute_input",
                    {"code": code, "execution_count": self.execution_count},
                )
        metadata = message.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else None
        self._send(self.shell, jheader, content, None, buffers, metadata)

    def on_control(self, message: dict[str, Any]) -> None:
        request_id, op = message.get("id"), message.get("op")
        msg_type = CONTROL_OPS.get(op)
        if msg_type is None:
            error = {"status": "error", "ename": "ValueError", "evalue": "unknown control op"}
            self.send({"type": "reply", "id": request_id, "msg_type": "error", "content": error})
            return
        header = self.writer.header(msg_type)
        self.pending[header["msg_id"]] = Pending(request_id, op, control=True)
        self._send(self.control, header, message.get("content") or {})

    def on_interrupt(self, message: dict[str, Any]) -> None:
        if self.execute_msg_id is None:
            return  # nothing to be executed: ignored, as documented
        content = {
            "msg_id": self.execute_msg_id,
            "reason": message.get("reason", "user"),
            "message": message.get("message", ""),
        }
        self._send(self.control, self.writer.header("kcr_interrupt_request"), content)

    def on_input_reply(self, message: dict[str, Any]) -> None:
        for pending in self.pending.values():
            if pending.request_id == message.get("id") and pending.input_parent is not None:
                parent, pending.input_parent = pending.input_parent, None
                reply = {"value": str(message.get("value", ""))}
                self._send(self.stdin, self.writer.header("input_reply"), reply, parent)
                return

    # -- the kernel's life ---------------------------------------------------------------------
    def _check_kernel_alive(self) -> None:
        if self.kernel_pid is None:
            return  # in-process: nothing to watch
        try:
            pid, status = os.waitpid(self.kernel_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.kernel_pid, 0
        if pid == 0:
            return
        # Send what the kernel published before it died, then die the same way.
        with contextlib.suppress(Exception):
            self._drain(self.iopub, self.on_iopub)
        self.die_like(status)

    def die_like(self, status: int) -> None:
        with contextlib.suppress(Exception):
            self.flush_all()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            with contextlib.suppress(Exception):
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the workspace
                signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)

    def stop_kernel_and_exit(self, code: int) -> None:
        if self.kernel_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.kernel_pid, signal.SIGKILL)
        os._exit(code)


def _decode_buffers(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        with contextlib.suppress(Exception):
            out.append(base64.b64decode(item))
    return out

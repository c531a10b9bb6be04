"""Shared machinery of the workers that run user code in child processes (Bash, R, compiled).

A ``SubprocessWorker`` speaks the worker protocol (``runner/README.md``) with the Python
worker's ``ProtocolChannel`` and ``OutputRouter`` (batched, capped ``stream`` events) and leaves
one thing to its subclass: ``run_cell(code)``, which runs a cell in some child process and
returns ``None`` (success) or the Jupyter error content. Interrupts and runner-side timeouts
call the subclass's ``stop_cell()`` from the protocol reader thread; ``interrupted_error()``
gives the matching error (``KeyboardInterrupt`` or ``TimeoutError``).
"""

from __future__ import annotations

import codecs
import os
import signal
import sys
import threading
from typing import Any, BinaryIO

from .python_worker.channel import ProtocolChannel
from .python_worker.output import OutputRouter
from .worker_protocol import REPLY_TYPES, decode

SYNC_MARK = b"\x00KCR-SYNC\x00"


class PipePump:
    """A thread copying one child pipe (stdout or stderr) into the ``OutputRouter``.

    ``sync()`` waits until the pump has read a ``SYNC_MARK`` the child wrote (so everything the
    child wrote before it has reached the router); marks are removed from the text.
    """

    def __init__(self, pipe: BinaryIO | int, name: str, router: OutputRouter):
        self._fd = pipe if isinstance(pipe, int) else pipe.fileno()
        self.name = name
        self._router = router
        self._marks = 0
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name=f"kcr-pump-{name}", daemon=True)
        self.thread.start()

    def marks_seen(self) -> int:
        with self._cond:
            return self._marks

    def wait_marks(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._marks >= target, timeout)

    def _loop(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        carry = b""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self._router.write(self.name, decoder.decode(carry, final=True))
                with self._cond:
                    self._marks = 1 << 60  # nothing more will come: every wait is over
                    self._cond.notify_all()
                return
            data, carry = carry + data, b""
            marks = data.count(SYNC_MARK)
            data = data.replace(SYNC_MARK, b"")
            for size in range(len(SYNC_MARK) - 1, 0, -1):  # a mark split across two reads
                if data.endswith(SYNC_MARK[:size]):
                    data, carry = data[:-size], data[-size:]
                    break
            self._router.write(self.name, decoder.decode(data))
            if marks:
                with self._cond:
                    self._marks += marks
                    self._cond.notify_all()


def error_content(ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, Any]:
    return {"ename": ename, "evalue": evalue, "traceback": traceback or [f"{ename}: {evalue}"]}


def describe_status(code: int) -> str:
    """``exited with status 3`` / ``was killed by signal SIGSEGV`` for a child's return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by signal {name}"
    return f"exited with status {code}"


class SubprocessWorker:
    """Serves requests one at a time; subclasses implement ``run_cell`` and ``stop_cell``.

    ``execute`` sends ``execute_input``, streams the child's output through the router, sends
    ``error`` when ``run_cell`` returns error content, and replies in Jupyter 5.3 form. The
    execution count grows by one per non-silent execute. ``complete``/``inspect`` answer with
    nothing found; ``snapshot``/``restore`` answer ``not_supported`` (these languages keep no
    picklable namespace); comms are refused like the Python worker does.
    """

    language = "unknown"

    def __init__(self, channel: ProtocolChannel, router: OutputRouter):
        self.channel = channel
        self.router = router
        self.execution_count = 1
        self.current: str | None = None
        self.executing = False
        self.interrupt_reason: str | None = None
        self.interrupt_message = ""

    # -- for subclasses ---------------------------------------------------------------------
    def run_cell(self, code: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def stop_cell(self) -> None:
        """Stop the running cell (called from the protocol reader thread)."""
        raise NotImplementedError

    def event(self, event: str, content: dict[str, Any]) -> None:
        """Send an output event of the running request (pending stream text goes first)."""
        self.router.flush()
        self.channel.event(self.current, event, content)

    def interrupted_error(self) -> dict[str, Any]:
        if self.interrupt_reason == "timeout":
            return error_content("TimeoutError", self.interrupt_message or "the cell timed out")
        return error_content("KeyboardInterrupt", "the cell was interrupted")

    # -- protocol ---------------------------------------------------------------------------------
    def on_interrupt(self, message: dict[str, Any]) -> None:
        if not self.executing:
            return
        self.interrupt_reason = message.get("reason") or "user"
        self.interrupt_message = str(message.get("message") or "")
        try:
            self.stop_cell()
        except Exception as exc:  # never let the reader thread die
            print(f"kcr worker: interrupt failed: {exc}", file=sys.stderr)

    def serve_forever(self) -> None:
        while True:
            message = self.channel.requests.get()
            request_id = message.get("id")
            op = message.get("op")
            handler = getattr(self, f"op_{op}", None)
            self.current = request_id
            try:
                if handler is None:
                    reply = {"status": "error", **error_content("ValueError", f"unknown op {op!r}")}
                else:
                    reply = handler(message.get("content") or {})
            except Exception as exc:
                reply = {"status": "error", **error_content(type(exc).__name__, str(exc))}
            finally:
                self.current = None
            self.channel.reply(request_id, REPLY_TYPES.get(op, "error"), reply)

    def op_execute(self, content: dict[str, Any]) -> dict[str, Any]:
        code = str(content.get("code", ""))
        silent = bool(content.get("silent", False))
        count = self.execution_count
        self.channel.event(self.current, "execute_input", {"code": code, "execution_count": count})
        if not silent:
            self.execution_count += 1
        self.interrupt_reason = None
        self.router.begin(self.current)
        try:
            self.executing = True
            try:
                error = self.run_cell(code) if code.strip() else None
            finally:
                self.executing = False
            if self.interrupt_reason is not None:
                error = self.interrupted_error()
        finally:
            self.router.end()
        reply: dict[str, Any] = {"execution_count": count, "payload": [], "user_expressions": {}}
        if error is None:
            reply["status"] = "ok"
        else:
            self.channel.event(self.current, "error", error)
            reply.update(status="error", **error)
        return reply

    def op_complete(self, content: dict[str, Any]) -> dict[str, Any]:
        cursor = int(content.get("cursor_pos", len(str(content.get("code", "")))) or 0)
        return {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor,
            "cursor_end": cursor,
            "metadata": {},
        }

    def op_inspect(self, content: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    def op_is_complete(self, content: dict[str, Any]) -> dict[str, Any]:
        return {"status": "unknown"}

    def op_history(self, content: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "history": []}

    def op_comm_info(self, content: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "comms": {}}

    def _comms_unsupported(self, content: dict[str, Any]) -> dict[str, Any]:
        error = error_content("NotImplementedError", "comms are not supported by this kernel")
        self.channel.event(self.current, "error", error)
        return {"status": "error", **error}

    op_comm_open = op_comm_msg = op_comm_close = _comms_unsupported

    def _no_state(self, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "error",
            "reason": "not_supported",
            "message": f"the {self.language} kernel cannot save its in-memory state; "
            "only the workspace files are kept",
        }

    op_snapshot = op_restore = _no_state


def start(worker_factory, language: str, **ready_extra: Any) -> None:
    """Entry point shared by the subprocess workers: protocol setup, then ``serve_forever``.

    Moves the protocol pipes off descriptors 0/1 (0 becomes /dev/null, 1 the runner's log), reads
    ``configure``, builds the worker with ``worker_factory(channel, router)``, sends ``ready``.
    """
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    first = proto_in.readline()
    options = decode(first) if first else {}
    if options.get("type") != "configure":
        print("kcr worker: expected a configure message first", file=sys.stderr)
        raise SystemExit(2)
    worker = None

    def on_interrupt(message: dict[str, Any]) -> None:
        if worker is not None:
            worker.on_interrupt(message)

    channel = ProtocolChannel(proto_in, proto_out, on_interrupt)
    router = OutputRouter(channel.event, int(options.get("max_output_bytes", 10 * 1024 * 1024)))
    worker = worker_factory(channel, router)
    router.start()
    channel.start()
    channel.send({"type": "ready", "language": language, "pid": os.getpid(), **ready_extra})
    worker.serve_forever()

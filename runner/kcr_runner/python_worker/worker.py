"""The Python worker's request handlers (execute, complete, inspect, ..., snapshot, restore)."""

from __future__ import annotations

import builtins
import getpass
import signal
import sys
import threading
import traceback
from typing import Any

from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.core.error import StdinNotImplementedError
from IPython.utils.tokenutil import token_at_cursor

from ..worker_protocol import REPLY_TYPES
from . import state
from .channel import ProtocolChannel, interrupt_main_thread
from .output import FdCapture, OutputRouter, flush_c_stdio
from .shell import WorkerShell


class PythonWorker:
    """Serves queued requests on the main thread, one at a time, against one ``WorkerShell``.

    Interrupts arrive on the protocol reader thread, which signals the main thread with SIGINT
    while a cell is running: the cell gets ``KeyboardInterrupt`` (or ``TimeoutError`` for a
    runner-side cell timeout) and the namespace survives. An interrupt that arrives while an
    execute request is queued or being set up (a client may interrupt as soon as it sees the
    kernel busy) is kept for that cell, which then ends with ``KeyboardInterrupt`` before
    running; an interrupt while nothing is to be executed is ignored.
    """

    def __init__(self, channel: ProtocolChannel, router: OutputRouter, shell: WorkerShell):
        self.channel = channel
        self.router = router
        self.shell = shell
        self.captures: list[FdCapture] = []
        self.max_state_bytes = 1 << 30
        self.current: str | None = None
        self.executing = False
        self._allow_stdin = False
        self._interrupt_exc: BaseException | None = None
        self._interrupt_lock = threading.Lock()
        self._pending_interrupt = False
        self.current_op: str | None = None
        shell.sink = self._sink
        signal.signal(signal.SIGINT, self._on_sigint)
        builtins.input = self._input
        getpass.getpass = self._getpass

    # -- events ---------------------------------------------------------------------------
    def _sink(self, event: str, content: dict[str, Any]) -> None:
        self.router.flush()  # stream text written before this output is sent before it
        self.channel.event(self.current, event, content)

    def sync_output(self) -> None:
        sys.stdout.flush()
        flush_c_stdio()
        for capture in self.captures:
            capture.sync()
        self.router.flush()

    # -- interrupts ---------------------------------------------------------------------------
    def on_interrupt(self, message: dict[str, Any]) -> None:
        with self._interrupt_lock:
            if self.executing:
                if message.get("reason") == "timeout":
                    self._interrupt_exc = TimeoutError(message.get("message") or "cell timed out")
                interrupt_main_thread()
            elif self._execute_waiting():
                self._pending_interrupt = True

    def _execute_waiting(self) -> bool:
        """An execute request is being set up, or is the next one queued."""
        if self.current_op == "execute":
            return True
        requests = self.channel.requests
        with requests.mutex:
            return bool(requests.queue) and requests.queue[0].get("op") == "execute"

    def _start_executing(self) -> bool:
        """Mark a cell as running; False when an interrupt for it came in already."""
        with self._interrupt_lock:
            self.executing = True
            pending, self._pending_interrupt = self._pending_interrupt, False
            return not pending

    def _on_sigint(self, signum, frame) -> None:
        __tracebackhide__ = True  # IPython leaves this frame out of the user's traceback
        if not self.executing:
            return
        exc, self._interrupt_exc = self._interrupt_exc, None
        raise exc if exc is not None else KeyboardInterrupt()

    # -- stdin ----------------------------------------------------------------------------------
    def _input(self, prompt: object = "") -> str:
        return self._request_input(str(prompt), password=False)

    def _getpass(self, prompt: str = "Password: ", stream: object = None) -> str:
        return self._request_input(prompt, password=True)

    def _request_input(self, prompt: str, password: bool) -> str:
        if not self._allow_stdin or self.current is None:
            raise StdinNotImplementedError(
                "input() and getpass() are not available: the client sent this request with "
                "allow_stdin=false, so the kernel cannot ask it for input"
            )
        self.sync_output()
        self.channel.event(self.current, "input_request", {"prompt": prompt, "password": password})
        while True:
            reply = self.channel.input_replies.get()
            if reply.get("id") == self.current:
                return str(reply.get("value", ""))

    # -- main loop ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while True:
            try:
                message = self.channel.requests.get()
            except KeyboardInterrupt:
                continue
            self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = message.get("op")
        content = message.get("content") or {}
        handler = getattr(self, f"op_{op}", None)
        msg_type = REPLY_TYPES.get(op, "error")
        if handler is None:
            reply = _error_reply("ValueError", f"unknown op {op!r}")
        else:
            self.current = request_id
            self.current_op = op
            try:
                reply = handler(request_id, content)
            except KeyboardInterrupt:
                reply = _error_reply("KeyboardInterrupt", "interrupted")
            except Exception as exc:
                reply = _error_reply(type(exc).__name__, str(exc), traceback.format_exc())
            finally:
                self.current = None
                self.current_op = None
        self.channel.reply(request_id, msg_type, reply)

    # -- ops ------------------------------------------------------------------------------------
    def op_execute(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        shell = self.shell
        code = str(content.get("code", ""))
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent)) and not silent
        count = shell.execution_count
        shell.last_error = None
        self._allow_stdin = bool(content.get("allow_stdin", False))
        self.router.begin(request_id)
        result = None
        try:
            # Interruptible from before execute_input leaves: a client may interrupt as soon
            # as it sees it, before run_cell has started.
            runnable = self._start_executing()
            try:
                self.channel.event(
                    request_id, "execute_input", {"code": code, "execution_count": count}
                )
                if runnable:
                    result = shell.run_cell(code, store_history=store_history, silent=silent)
                else:
                    shell.showtraceback(
                        (KeyboardInterrupt, KeyboardInterrupt("interrupted before it ran"), None)
                    )
            finally:
                self.executing = False
        except KeyboardInterrupt:  # landed outside IPython's own handler
            shell.showtraceback()
        try:
            self.sync_output()
        finally:
            self.router.end()
        reply: dict[str, Any] = {"execution_count": count, "payload": [], "user_expressions": {}}
        if result is not None and result.success and shell.last_error is None:
            reply["status"] = "ok"
            expressions = content.get("user_expressions") or {}
            if expressions:
                reply["user_expressions"] = shell.user_expressions(expressions)
        else:
            error = shell.last_error or {"ename": "UnknownError", "evalue": "", "traceback": []}
            reply.update(status="error", **error)
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        return reply

    def op_complete(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        code = str(content.get("code", ""))
        cursor = int(content.get("cursor_pos", len(code)) or 0)
        with provisionalcompleter():
            found = list(rectify_completions(code, self.shell.Completer.completions(code, cursor)))
        types = [
            {
                "start": c.start,
                "end": c.end,
                "text": c.text,
                "type": c.type,
                "signature": c.signature,
            }
            for c in found
        ]
        return {
            "status": "ok",
            "matches": [c.text for c in found],
            "cursor_start": found[0].start if found else cursor,
            "cursor_end": found[0].end if found else cursor,
            "metadata": {"_jupyter_types_experimental": types} if types else {},
        }

    def op_inspect(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        code = str(content.get("code", ""))
        cursor = int(content.get("cursor_pos", len(code)) or 0)
        name = token_at_cursor(code, cursor)
        try:
            data = self.shell.object_inspect_mime(
                name, detail_level=int(content.get("detail_level", 0) or 0)
            )
        except KeyError:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        if not self.shell.enable_html_pager:
            data.pop("text/html", None)
        return {"status": "ok", "found": True, "data": data, "metadata": {}}

    def op_is_complete(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        checker = self.shell.input_transformer_manager
        status, indent = checker.check_complete(str(content.get("code", "")))
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    def op_history(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        manager = self.shell.history_manager
        kind = content.get("hist_access_type", "tail")
        raw = bool(content.get("raw", True))
        output = bool(content.get("output", False))
        if kind == "tail":
            items = manager.get_tail(
                content.get("n", 10), raw=raw, output=output, include_latest=True
            )
        elif kind == "range":
            items = manager.get_range(
                content.get("session", 0),
                content.get("start", 1),
                content.get("stop"),
                raw=raw,
                output=output,
            )
        elif kind == "search":
            items = manager.search(
                content.get("pattern", "*"),
                raw=raw,
                output=output,
                n=content.get("n"),
                unique=bool(content.get("unique")),
            )
        else:
            return _error_reply("ValueError", f"unknown hist_access_type {kind!r}")
        return {"status": "ok", "history": [list(item) for item in items]}

    def op_comm_info(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "comms": {}}

    def _comms_unsupported(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        error = {
            "ename": "NotImplementedError",
            "evalue": "comms (widgets) are not supported by this kernel yet",
            "traceback": [],
        }
        self.channel.event(request_id, "error", error)
        return {"status": "error", **error}

    op_comm_open = op_comm_msg = op_comm_close = _comms_unsupported

    def op_snapshot(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        try:
            blob, header = state.snapshot(self.shell, self.max_state_bytes)
        except state.StateTooLarge as exc:
            return {"status": "error", "reason": "state_too_large", "message": str(exc)}
        return {
            "status": "ok",
            "blob": blob,
            "names": header["names"] + sorted(header["modules"]) + sorted(header["imports"]),
            "skipped": header["skipped"],
        }

    def op_restore(self, request_id: str, content: dict[str, Any]) -> dict[str, Any]:
        try:
            blob = content.get("blob", b"")
            result = state.restore(self.shell, blob)
        except (state.BadStateBlob, ValueError) as exc:
            return {"status": "error", "reason": "bad_state", "message": str(exc)}
        return {"status": "ok", **result}


def _error_reply(ename: str, evalue: str, tb: str | None = None) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [tb] if tb else []}

"""The worker's end of the worker protocol: a locked writer and a reader thread."""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from ..worker_protocol import decode, encode, split_blob


class ProtocolChannel:
    """Sends protocol messages to the runner and routes the runner's messages.

    ``requests`` receives queued requests for the main thread. Interrupts are acted on by the
    reader thread at once (``on_interrupt``), input replies go to ``input_replies`` and
    ``control`` messages (``set_env``) are answered by the reader thread without waiting for the
    running cell. When the runner closes the pipe the worker exits.
    """

    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, on_interrupt: Callable[[dict], None]):
        self._rfile = rfile
        self._wfile = wfile
        self._write_lock = threading.Lock()
        self._on_interrupt = on_interrupt
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        self.input_replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, name="kcr-protocol", daemon=True)

    def start(self) -> None:
        self._reader.start()

    def send(self, message: dict[str, Any]) -> None:
        message, blob = split_blob(message)
        data = encode(message)
        with self._write_lock:
            try:
                self._wfile.write(data)
                if blob is not None:
                    self._wfile.write(blob)
                self._wfile.flush()
            except (BrokenPipeError, ValueError):
                os._exit(0)  # the runner is gone: nothing left to serve

    def event(self, request_id: str | None, event: str, content: dict[str, Any]) -> None:
        self.send({"type": "event", "id": request_id, "event": event, "content": content})

    def reply(self, request_id: str, msg_type: str, content: dict[str, Any]) -> None:
        self.send({"type": "reply", "id": request_id, "msg_type": msg_type, "content": content})

    def _read_loop(self) -> None:
        for line in self._rfile:
            try:
                message = decode(line)
            except ValueError as exc:
                print(f"kcr worker: bad protocol line ignored: {exc}", file=sys.__stderr__)
                continue
            if message.get("binary"):
                message["content"]["blob"] = self._rfile.read(message.pop("binary"))
            kind = message.get("type")
            if kind == "request":
                self.requests.put(message)
            elif kind == "interrupt":
                self._on_interrupt(message)
            elif kind == "input_reply":
                self.input_replies.put(message)
            elif kind == "control":
                self._control(message)
        # EOF: the runner closed our stdin, so it is shutting down or gone.
        os._exit(0)

    def _control(self, message: dict[str, Any]) -> None:
        content = message.get("content") or {}
        if message.get("op") == "set_env":
            env = content.get("env") or {}
            os.environ.update({str(k): str(v) for k, v in env.items()})
            self.reply(message["id"], "set_env_reply", {"status": "ok"})
        else:
            self.reply(
                message.get("id"),
                "error",
                {"status": "error", "ename": "ValueError", "evalue": "unknown control op"},
            )


def interrupt_main_thread() -> None:
    """Deliver SIGINT to the main thread, so blocking calls (``time.sleep``) return EINTR too."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

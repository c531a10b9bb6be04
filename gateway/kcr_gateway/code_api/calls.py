"""One ``/v1/exec`` call as a Jupyter ``execute_request`` on a kernel's :class:`KernelSession`.

:class:`CallCollector` is a :class:`~kcr_kernels.session.KernelListener`: it sends one
request into the session (so the call takes its turn in the kernel's shell queue, behind
any cell a Jupyter client queued) and gathers what the kernel published for it:

* ``stream`` → stdout / stderr (each capped at ``max_output_bytes``; what is over the cap
  is dropped and one line says how much);
* ``error`` → its traceback (ANSI colours removed) on stderr;
* ``execute_result`` → its image if it is one; its text is not returned (calls run like
  scripts: clients ``print()`` what they want to see, as LibreChat's tool tells models);
* ``display_data`` with an image (``image/png``, ``image/jpeg``, ``image/gif``,
  ``image/svg+xml``, e.g. a matplotlib figure) → an :class:`Image`, which the session
  writes into the working folder as a file; other ``display()`` output falls back to its
  ``text/plain`` on stdout.

The call is done when the ``execute_reply`` and the following ``idle`` have arrived.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from dataclasses import dataclass, field

from kcr_kernels.session import KernelSession

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
IMAGE_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/svg+xml": "svg",
}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class Image:
    """A rich image output: its bytes and the file extension for its type."""

    data: bytes
    extension: str


class _Capped:
    """Text up to ``limit`` UTF-8 bytes; counts what was dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        if not text:
            return
        encoded = len(text.encode("utf-8", "replace"))
        room = self.limit - self.size
        if encoded <= room:
            self.parts.append(text)
            self.size += encoded
            return
        if room > 0:
            cut = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
            self.parts.append(cut)
            self.size += room
            self.dropped += encoded - room
        else:
            self.dropped += encoded

    def text(self, name: str) -> str:
        out = "".join(self.parts)
        if self.dropped:
            if out and not out.endswith("\n"):
                out += "\n"
            out += (
                f"[kcr] {name} truncated: {self.dropped} more bytes were not returned "
                f"(limit {self.limit} bytes per call)\n"
            )
        return out


@dataclass
class CallResult:
    """What one call produced."""

    stdout: str = ""
    stderr: str = ""
    status: str = "ok"  #: the execute_reply's status: ok, error or aborted
    images: list[Image] = field(default_factory=list)
    timed_out: bool = False


class CallCollector:
    """Runs one execute request on a session and collects its outputs (see module doc)."""

    def __init__(self, session: KernelSession, max_output_bytes: int):
        self.session = session
        self.msg_id = uuid.uuid4().hex
        self._stdout = _Capped(max_output_bytes)
        self._stderr = _Capped(max_output_bytes)
        self._images: list[Image] = []
        self._reply: dict | None = None
        self._idle = False
        self._done = asyncio.Event()
        self._started = asyncio.Event()  # the code runs (execute_input seen)

    def send(self, channel: str, msg: dict) -> None:
        if (msg.get("parent_header") or {}).get("msg_id") != self.msg_id:
            return
        msg_type = msg["header"]["msg_type"]
        content = msg.get("content") or {}
        if channel == "shell" and msg_type == "execute_reply":
            self._reply = content
        elif channel != "iopub":
            return
        elif msg_type == "stream":
            target = self._stderr if content.get("name") == "stderr" else self._stdout
            target.add(content.get("text", ""))
        elif msg_type == "error":
            lines = content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
            self._stderr.add(strip_ansi("\n".join(lines)) + "\n")
        elif msg_type in ("execute_result", "display_data"):
            self._rich(msg_type, content.get("data") or {})
        elif msg_type == "execute_input":
            self._started.set()
        elif msg_type == "status" and content.get("execution_state") == "idle":
            self._idle = True
        if self._reply is not None and self._idle:
            self._done.set()

    def _rich(self, msg_type: str, data: dict) -> None:
        for mime, extension in IMAGE_TYPES.items():
            if mime in data:
                value = data[mime]
                if mime == "image/svg+xml":
                    raw = (value if isinstance(value, str) else "".join(value)).encode()
                else:
                    try:
                        raw = base64.b64decode(value)
                    except (ValueError, TypeError):
                        continue
                self._images.append(Image(raw, extension))
                return
        if msg_type == "execute_result":
            return  # a script does not echo its last expression: clients print() what they want
        text = data.get("text/plain")
        if isinstance(text, list):
            text = "".join(text)
        if isinstance(text, str):
            self._stdout.add(strip_ansi(text) + "\n")

    def request(self, code: str, *, silent: bool = False) -> dict:
        factory = self.session.msg_factory
        header = factory.msg_header("execute_request")
        header["msg_id"] = self.msg_id
        header["version"] = "5.3"
        header["date"] = header["date"].isoformat()  # JSON on the way to the runner
        return {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "content": {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": False,
            },
        }

    @staticmethod
    async def _first(*events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def run(
        self, code: str, timeout: float, *, silent: bool = False, start_wait: float = 60.0
    ) -> CallResult:
        """Queue ``code`` on the session; once it runs, wait at most ``timeout`` s for it,
        then interrupt it. Waiting for the kernel's turn and for a pod (a session resuming
        on a fresh one) counts against ``start_wait`` instead."""
        session = self.session
        session.add_listener(self)
        timed_out = False
        try:
            session.handle(self, self.request(code, silent=silent), len(code))
            try:
                if not silent:  # silent requests publish no execute_input
                    await asyncio.wait_for(self._first(self._started, self._done), start_wait)
                await asyncio.wait_for(self._done.wait(), timeout)
            except TimeoutError:
                timed_out = True
                await session.interrupt()
                try:
                    await asyncio.wait_for(self._done.wait(), 10.0)
                except TimeoutError:
                    pass
        finally:
            session.remove_listener(self)
        stderr = self._stderr.text("stderr")
        if timed_out:
            stderr += (
                f"[kcr] The call ran longer than its limit of {timeout:g} s and was interrupted.\n"
            )
        return CallResult(
            stdout=self._stdout.text("stdout"),
            stderr=stderr,
            status=(self._reply or {}).get("status", "error"),
            images=self._images,
            timed_out=timed_out,
        )

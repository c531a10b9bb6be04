"""Stream capture for the Python worker: batched, capped ``stream`` events.

Python-level writes (``sys.stdout``/``sys.stderr``) and C-level / subprocess writes to file
descriptors 1 and 2 end up in one ``OutputRouter`` that sends them to the runner as ``stream``
events every ``interval`` seconds (or sooner when a lot is pending), so a loop that prints while
it sleeps streams live, and printing 100,000 lines costs a handful of events, not 100,000.
"""

from __future__ import annotations

import codecs
import ctypes
import io
import os
import threading
import time
from collections.abc import Callable

_SYNC_MARK = b"\x00KCR-SYNC\x00"


class OutputRouter:
    """Collects stream text per (request id, stream name) and flushes it as ``stream`` events.

    ``begin(request_id)`` starts a cell's accounting; past ``max_bytes`` characters of stream
    text in one cell a single truncation notice is sent and the rest is dropped.
    ``flush()`` sends everything pending, in write order. Thread-safe.
    """

    def __init__(
        self,
        send_event: Callable[[str | None, str, dict], None],
        max_bytes: int,
        interval: float = 0.05,
        eager_bytes: int = 256 * 1024,
    ):
        self._send_event = send_event
        self.max_bytes = max_bytes
        self._interval = interval
        self._eager_bytes = eager_bytes
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._chunks: list[tuple[str | None, str, str]] = []
        self._pending = 0
        self._wake = threading.Event()
        self.request_id: str | None = None
        self._cell_chars = 0
        self._truncated = False
        self._thread = threading.Thread(target=self._flush_loop, name="kcr-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def begin(self, request_id: str | None) -> None:
        with self._lock:
            self.request_id = request_id
            self._cell_chars = 0
            self._truncated = False

    def end(self) -> None:
        self.flush()
        with self._lock:
            self.request_id = None

    def write(self, name: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._truncated:
                return
            room = self.max_bytes - self._cell_chars
            if len(text) > room:
                text = text[: max(room, 0)]
                self._truncated = True
            self._cell_chars += len(text)
            if text:
                self._chunks.append((self.request_id, name, text))
                self._pending += len(text)
            if self._truncated:
                notice = (
                    f"\n[kcr] output truncated: this cell wrote more than {self.max_bytes} "
                    "characters of stream output; the rest is dropped.\n"
                )
                self._chunks.append((self.request_id, "stderr", notice))
            eager = self._pending >= self._eager_bytes
        if eager:
            self._wake.set()

    def flush(self) -> None:
        with self._send_lock:  # keeps events in write order across threads
            with self._lock:
                chunks, self._chunks, self._pending = self._chunks, [], 0
            merged: list[list] = []
            for request_id, name, text in chunks:
                if merged and merged[-1][0] == request_id and merged[-1][1] == name:
                    merged[-1][2].append(text)
                else:
                    merged.append([request_id, name, [text]])
            for request_id, name, parts in merged:
                self._send_event(request_id, "stream", {"name": name, "text": "".join(parts)})

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()


class CaptureStream(io.TextIOBase):
    """A text stream (``sys.stdout``/``sys.stderr`` replacement) feeding an ``OutputRouter``."""

    def __init__(self, router: OutputRouter, name: str):
        super().__init__()
        self._router = router
        self.name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._router.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass  # the router flushes on its own schedule and at the end of every request


class FdCapture:
    """Redirects a file descriptor (1 or 2) into a pipe read by a thread feeding the router.

    ``sync()`` makes sure everything written to the descriptor before the call (by this process
    and by finished child processes) has reached the router: it writes a marker through the
    pipe and waits until the reader thread has seen it.
    """

    def __init__(self, fd: int, name: str, router: OutputRouter):
        self._fd = fd
        self._router = router
        self.name = name
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)  # fd stays inheritable, so subprocesses write into the pipe
        os.close(write_end)
        self._read_end = read_end
        self._synced = threading.Condition()
        self._marks_seen = 0
        self._thread = threading.Thread(target=self._read_loop, name=f"kcr-fd{fd}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sync(self, timeout: float = 0.5) -> None:
        with self._synced:
            target = self._marks_seen + 1
        try:
            os.write(self._fd, _SYNC_MARK)
        except OSError:
            return
        deadline = time.monotonic() + timeout
        with self._synced:
            while self._marks_seen < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._synced.wait(left)

    def _read_loop(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        carry = b""
        while True:
            try:
                data = os.read(self._read_end, 65536)
            except InterruptedError:
                continue
            if not data:
                return
            data = carry + data
            carry = b""
            marks = data.count(_SYNC_MARK)
            if marks:
                data = data.replace(_SYNC_MARK, b"")
            # keep a possible partial marker at the end for the next read
            for size in range(len(_SYNC_MARK) - 1, 0, -1):
                if data.endswith(_SYNC_MARK[:size]):
                    carry, data = data[-size:], data[:-size]
                    break
            self._router.write(self.name, decoder.decode(data))
            if marks:
                with self._synced:
                    self._marks_seen += marks
                    self._synced.notify_all()


def flush_c_stdio() -> None:
    """Flush C-level stdio buffers (``printf`` from extensions) into the captured descriptors."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass

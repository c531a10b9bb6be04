"""The kernel's IOPub path, through ipykernel's extension points: bounded and cheap.

ipykernel publishes every output from its IOPub thread: other threads queue messages for it
(``IOPubThread.send_multipart``), ``sys.stdout``/``sys.stderr`` (``OutStream``) buffer text and
hand it to that thread, and the thread writes to an XPUB socket whose default high-water mark
*drops* messages once 1,000 wait for a slow subscriber. kcr's one subscriber is the relay, which
reads only as fast as the runner (and, behind it, the client) takes output, so a flooding cell
would pile messages up in the pod's memory and then lose them silently. Here:

* :func:`configure_socket`: the XPUB socket keeps at most :data:`SOCKET_HWM` messages per
  subscriber and then *blocks* the IOPub thread (``XPUB_NODROP``) instead of dropping;
* :class:`KCRIOPubThread`: a thread that queues a message for the IOPub thread waits while
  more than :data:`MAX_QUEUED_BYTES` are queued (the IOPub thread itself and ipykernel's
  control thread never wait: interrupts and debugger replies keep flowing);
* :class:`KCROutStream` (``IPKernelApp.outstream_class``): a writer waits while more than
  :data:`MAX_BUFFERED_CHARS` of its stream text are not yet handed on, and ``flush()`` returns at
  once when nothing was written since the last completed flush (ipykernel runs it twice per
  cell, each a round trip to the IOPub thread).

Output that a client does not read therefore ends up blocking the cell (``print`` or
``display`` waits), never in unbounded queues, and nothing is dropped. Interrupts still work:
the waits are interruptible, so ``KeyboardInterrupt`` ends a blocked cell.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

import zmq
from ipykernel.control import ControlThread
from ipykernel.iostream import IOPubThread, OutStream

#: Messages the XPUB socket queues for its subscriber (the relay) before the IOPub thread waits.
SOCKET_HWM = 16
#: Bytes of messages other threads may have queued for the IOPub thread before they wait.
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: Characters of stream text one ``OutStream`` may buffer before its writer waits.
MAX_BUFFERED_CHARS = 1024 * 1024
#: Seconds between two looks while waiting (a wait also ends when the IOPub thread stops).
_WAIT_STEP = 0.2


def configure_socket(socket: zmq.Socket) -> None:
    """Bound the IOPub socket's queue, blocking instead of dropping when it is full."""
    socket.setsockopt(zmq.SNDHWM, SOCKET_HWM)
    socket.setsockopt(zmq.XPUB_NODROP, 1)


def _size(frames: Any) -> int:
    total = 0
    for frame in frames:
        try:
            total += len(frame)
        except TypeError:
            total += getattr(frame, "nbytes", 0)
    return total


class KCRIOPubThread(IOPubThread):
    """ipykernel's ``IOPubThread`` whose queue is bounded by :data:`MAX_QUEUED_BYTES`.

    ``send_multipart`` from any thread but the IOPub thread and the control thread waits
    (interruptibly) until the queue is below the bound; the message is then queued as usual,
    so the order of messages is ipykernel's.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._kcr_queued = 0
        self._kcr_room = threading.Condition()

    def send_multipart(self, *args: Any, **kwargs: Any) -> None:
        size = _size(args[0]) if args else 0
        current = threading.current_thread()
        may_wait = current is not self.thread and not isinstance(current, ControlThread)
        with self._kcr_room:
            while may_wait and self._kcr_queued > MAX_QUEUED_BYTES and self.thread.is_alive():
                self._kcr_room.wait(_WAIT_STEP)
            self._kcr_queued += size

        def send() -> None:
            try:
                self._really_send(*args, **kwargs)
            finally:
                with self._kcr_room:
                    self._kcr_queued -= size
                    self._kcr_room.notify_all()

        self.schedule(send)


class KCROutStream(OutStream):
    """ipykernel's ``OutStream`` with a bounded buffer and a free ``flush()`` when clean.

    ``write`` counts characters; ``_flush`` (on the IOPub thread) records how many writes it has
    handed on. ``flush()`` skips ipykernel's round trip to the IOPub thread when every write
    so far was handed on by a completed ``_flush`` (so no output can be overtaken by what the
    caller sends next), and ``write`` waits, past :data:`MAX_BUFFERED_CHARS` buffered, until
    the IOPub thread has taken the text.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._kcr_lock = threading.Lock()
        self._kcr_writes = 0  # writes whose text is in a buffer (counted after the append)
        self._kcr_flushed = 0  # writes handed on by completed _flush calls
        self._kcr_buffered = 0  # characters buffered and not yet taken by _flush
        super().__init__(*args, **kwargs)

    def _kcr_on_io_thread(self) -> bool:
        thread = self.pub_thread.thread if self.pub_thread is not None else None
        return thread is None or not thread.is_alive() or thread is threading.current_thread()

    def write(self, string: str) -> int | None:  # type: ignore[override]
        written = super().write(string)
        with self._kcr_lock:
            self._kcr_writes += 1
            self._kcr_buffered += len(string) if isinstance(string, str) else 0
            over = self._kcr_buffered > MAX_BUFFERED_CHARS
        if over and self._is_master_process() and not self._kcr_on_io_thread():
            self._kcr_wait_taken()
        return written

    def _kcr_wait_taken(self) -> None:
        """Ask the IOPub thread to publish the buffer and wait (interruptibly) until it has."""
        assert self.pub_thread is not None
        done = threading.Event()
        self.pub_thread.schedule(self._flush)
        self.pub_thread.schedule(done.set)
        while not done.wait(_WAIT_STEP):
            if self._kcr_on_io_thread():  # the IOPub thread stopped: nothing to wait for
                return

    def _flush(self) -> None:
        with self._kcr_lock:
            seen = self._kcr_writes
            self._kcr_buffered = 0
        super()._flush()
        with self._kcr_lock:
            self._kcr_flushed = max(self._kcr_flushed, seen)

    def flush(self) -> None:
        with self._kcr_lock:
            clean = self._kcr_flushed == self._kcr_writes
        if clean and self._is_master_process() and not self._kcr_on_io_thread():
            if not self._kcr_fd_output_waiting():
                return
        super().flush()

    def _kcr_fd_output_waiting(self) -> bool:
        """C-level output (a subprocess, a C library) still in ipykernel's fd pipe: wait, at
        most 50 ms, until its watcher thread has read it; True if there was any, so that the
        caller makes the full flush that publishes it before the cell's reply."""
        fid = getattr(self, "_fid", None)
        if not getattr(self, "_should_watch", False) or fid is None:
            return False
        waited = False
        deadline = time.monotonic() + 0.05
        while select.select([fid], [], [], 0)[0] and time.monotonic() < deadline:
            waited = True
            time.sleep(0.001)
        return waited

"""Decoding of kernel WebSocket frames, with every client-chosen size checked first.

jupyter_server's own decoders trust the frame: the v1 one loops over an
offset count read from the first 8 bytes, the legacy binary one unpacks a
client-chosen number of offsets. These decoders check the layout against the
frame's length before touching it, so their cost is bounded by the bytes
actually received (which tornado bounds by ``websocket_max_message_size``)
and by :data:`MAX_BUFFERS`.

Contract: :func:`decode` returns a message dict (``header``,
``parent_header``, ``metadata``, ``content`` as decoded JSON of any type,
``channel``, ``buffers``) or raises :class:`FrameError`, whose ``code`` is
the WebSocket close code to answer with (1003: a frame kind the protocol
does not take, 1007: a frame whose layout or JSON is invalid) and whose
``reason`` fits in a close frame. Types inside the message are checked
later, by :mod:`kcr_kernels.message_validation`.

Layouts (offsets count from the start of the frame):

* v1 (``v1.kernel.websocket.jupyter.org``, binary only): ``n`` as uint64
  little-endian, then ``n`` uint64 offsets; part ``i`` is
  ``frame[off[i]:off[i+1]]``: the channel, header, parent_header, metadata,
  content, then buffers. So ``n >= 6``.
* legacy binary: ``n`` as int32 big-endian, then ``n`` uint32 offsets; part
  ``i`` runs to the next offset (the last to the end): the message JSON,
  then buffers. So ``n >= 1``.
* legacy text: the message as JSON (no ``channel``: shell).
"""

from __future__ import annotations

import itertools
import json
import struct

#: Most binary buffers one message may carry (besides its JSON parts).
MAX_BUFFERS = 64

UNSUPPORTED = 1003
INVALID = 1007


class FrameError(ValueError):
    """A frame that cannot be decoded; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str):
        self.code = code
        self.reason = reason[:120]  # a close frame holds 123 bytes of reason
        super().__init__(reason)


def _offsets(frame: bytes, count_fmt: str, offset_fmt: str, least: int, most: int) -> list[int]:
    """The offset table, checked: count in range, offsets non-decreasing and inside."""
    head = struct.calcsize(count_fmt)
    size = struct.calcsize(offset_fmt)
    if len(frame) < head:
        raise FrameError(INVALID, f"frame of {len(frame)} bytes has no offset count")
    (n,) = struct.unpack_from(count_fmt, frame)
    if n < least:
        raise FrameError(INVALID, f"offset count {n} is below {least}")
    room = (len(frame) - head) // size
    if n > room:
        raise FrameError(INVALID, f"offset count {n} exceeds what {len(frame)} bytes can hold")
    if n > most:
        raise FrameError(
            INVALID, f"offset count {n} exceeds {most} ({MAX_BUFFERS} buffers at most)"
        )
    offsets = list(struct.unpack_from(f"{count_fmt[0]}{n}{offset_fmt[-1]}", frame, head))
    table_end = head + n * size
    previous = table_end
    for i, offset in enumerate(offsets):
        if offset < previous:
            raise FrameError(INVALID, f"offset {i} ({offset}) is before {previous}")
        if offset > len(frame):
            raise FrameError(INVALID, f"offset {i} ({offset}) is past the frame end ({len(frame)})")
        previous = offset
    return offsets


def _json(part: bytes, what: str):
    try:
        return json.loads(part)
    except (ValueError, RecursionError) as e:
        raise FrameError(INVALID, f"{what} is not valid JSON: {e}") from None


def decode_v1(frame: bytes | str) -> dict:
    """A ``v1.kernel.websocket.jupyter.org`` frame → message dict."""
    if isinstance(frame, str):
        raise FrameError(UNSUPPORTED, "v1.kernel.websocket.jupyter.org takes binary frames only")
    offsets = _offsets(frame, "<Q", "<Q", 6, 6 + MAX_BUFFERS)
    parts = [frame[a:b] for a, b in itertools.pairwise(offsets)]
    try:
        channel = parts[0].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID, "channel is not UTF-8") from None
    names = ("header", "parent_header", "metadata", "content")
    msg = {name: _json(part, name) for name, part in zip(names, parts[1:5], strict=True)}
    msg["channel"] = channel
    msg["buffers"] = parts[5:]
    return msg


def decode_legacy(frame: bytes | str) -> dict:
    """A legacy frame (JSON text, or binary with buffers) → message dict."""
    if isinstance(frame, str):
        msg = _json(frame, "message")
        if isinstance(msg, dict):
            msg.setdefault("channel", "shell")
            msg["buffers"] = []  # a text frame carries no binary buffers
        return msg
    offsets = _offsets(frame, "!i", "!I", 1, 1 + MAX_BUFFERS)
    ends = [*offsets[1:], len(frame)]
    parts = [frame[a:b] for a, b in zip(offsets, ends, strict=True)]
    msg = _json(parts[0], "message")
    if isinstance(msg, dict):
        msg.setdefault("channel", "shell")
        msg["buffers"] = parts[1:]
    return msg


def decode(frame: bytes | str, v1: bool) -> dict:
    """Decode one frame in the negotiated protocol (see the module docstring)."""
    return decode_v1(frame) if v1 else decode_legacy(frame)

"""The Jupyter wire format for the relay: multipart ZMQ messages, unsigned (the key is empty).

``[identities..., b"<IDS|MSG>", signature, header, parent_header, metadata, content,
buffers...]``, each JSON part UTF-8. jupyter_client's ``Session`` does the same plus
signing and date parsing (``dateutil`` on every header); the relay needs neither -- it reads
msg_ids and message types and passes contents on -- and runs this on every message of every
cell, so it uses this small codec. The kernel side is ipykernel's own ``Session``.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"


def parse(frames: list[bytes]) -> dict[str, Any]:
    """One message from its frames; raises ``ValueError`` on a malformed one."""
    msg = parse_lazy(frames)
    msg["content"] = json.loads(msg["content"])
    return msg


def parse_lazy(frames: list[bytes]) -> dict[str, Any]:
    """:func:`parse` leaving ``content`` and ``metadata`` as the message's JSON bytes: the
    relay passes most of them on without reading them (``metadata`` is ``None`` when empty)."""
    try:
        start = frames.index(DELIM) + 2
    except ValueError:
        raise ValueError("not a Jupyter message (no delimiter)")
    if len(frames) < start + 4:
        raise ValueError("a Jupyter message needs header, parent, metadata and content")
    return {
        "header": json.loads(frames[start]),
        "parent_header": json.loads(frames[start + 1]),
        "metadata": None if frames[start + 2] in (b"{}", b"") else frames[start + 2],
        "content": frames[start + 3],
        "buffers": frames[start + 4 :],
    }


class Writer:
    """Builds messages for one client session (one ``session`` id, one username)."""

    def __init__(self, username: str = "kcr"):
        self.session = uuid.uuid4().hex
        self.username = username
        self.pid = os.getpid()

    def header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": self.session,
            "username": self.username,
            "date": datetime.now(UTC).isoformat(),
            "version": PROTOCOL_VERSION,
        }

    def frames(
        self,
        header: dict[str, Any],
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[bytes]:
        """The frames of one message (no identities: DEALER sockets)."""
        return [
            DELIM,
            b"",  # signature: the connection key is empty
            _dumps(header),
            _dumps(parent or {}),
            _dumps(metadata) if metadata else b"{}",
            _dumps(content),
            *(buffers or []),
        ]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()

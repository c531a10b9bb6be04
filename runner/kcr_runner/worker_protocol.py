"""The language-neutral worker protocol: newline-delimited JSON messages over two pipes.

The runner starts a worker with its stdin and stdout connected to pipes; every message is one
JSON object on one line (UTF-8, no embedded newlines). A worker for any language implements the
same messages, documented in ``runner/README.md``:

runner -> worker
    ``{"type": "request", "id": ID, "op": OP, "content": {...}}``  one at a time, in order
    ``{"type": "control", "id": ID, "op": "set_env", "content": {"env": {...}}}``  answered at once
    ``{"type": "interrupt", "reason": "user"|"timeout", "message": TEXT}``  no answer
    ``{"type": "input_reply", "id": ID, "value": TEXT}``  answers an ``input_request`` event

worker -> runner
    ``{"type": "ready", "language": NAME, "pid": PID}``  once, when it can take requests
    ``{"type": "event", "id": ID|null, "event": MSG_TYPE, "content": {...}}``
    ``{"type": "reply", "id": ID, "msg_type": MSG_TYPE, "content": {...}}``  exactly one per id
"""

from __future__ import annotations

import json
from typing import Any

#: Ops the runner queues for the worker (processed one at a time, in arrival order).
QUEUED_OPS = frozenset(
    {
        "execute",
        "complete",
        "inspect",
        "is_complete",
        "history",
        "comm_open",
        "comm_msg",
        "comm_close",
        "comm_info",
        "snapshot",
        "restore",
    }
)

#: The Jupyter reply type for each op.
REPLY_TYPES = {
    "execute": "execute_reply",
    "complete": "complete_reply",
    "inspect": "inspect_reply",
    "is_complete": "is_complete_reply",
    "history": "history_reply",
    "comm_info": "comm_info_reply",
    "comm_open": "comm_reply",
    "comm_msg": "comm_reply",
    "comm_close": "comm_reply",
    "kernel_info": "kernel_info_reply",
    "snapshot": "snapshot_reply",
    "restore": "restore_reply",
    "set_env": "set_env_reply",
}


def split_blob(message: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """Take a bytes ``content["blob"]`` out of ``message``: the line then says ``"binary": N``
    and the N raw bytes follow it (no base64 and no JSON for state blobs)."""
    content = message.get("content")
    if isinstance(content, dict) and isinstance(content.get("blob"), (bytes, bytearray)):
        blob = content["blob"]
        content = {k: v for k, v in content.items() if k != "blob"}
        return {**message, "content": content, "binary": len(blob)}, blob
    return message, None


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line: compact JSON plus a newline (json never emits raw newlines)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one protocol line; raises ``ValueError`` when it is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("worker protocol message is not a JSON object")
    return message

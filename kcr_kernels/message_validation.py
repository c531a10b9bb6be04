"""Type checks for one incoming Jupyter message, before a kernel sees it.

Every client message (a gateway WebSocket frame, a ZMQ message to the bridge
kernel) goes through :func:`validate` before :meth:`KernelSession.handle`.
A message that passes has the shapes the session relies on: a ``header``
with string ``msg_id``/``msg_type``/``session``, dict ``parent_header``,
``metadata`` and ``content``, a known ``channel``, and content fields of the
right types for the requests kcr handles. A message that fails raises
:class:`BadMessage` naming the first bad field; :func:`error_reply` says
whether (and how) the sender can be answered.

Content rules live in :data:`CONTENT_RULES` (msg_type → field → rule), so a
new message type is one table entry. A msg_type that is not in the table is
only checked for a dict content: the session answers it (or not) itself.

Example::

    try:
        validate(msg, kernel_id)
    except BadMessage as e:
        reply = error_reply(msg, e.ename, str(e))   # None: log and drop
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CHANNELS = ("shell", "control", "stdin")

#: A rule: (type check, description used in the error, required?)
Rule = tuple[Callable[[Any], bool], str, bool]


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nonneg_int(v: Any) -> bool:
    return _int(v) and v >= 0


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


STR: Rule = (_str, "a string", False)
BOOL: Rule = (_bool, "a boolean", False)
INT: Rule = (_int, "an integer", False)
DICT: Rule = (_dict, "an object", False)


def required(rule: Rule) -> Rule:
    return (rule[0], rule[1], True)


CODE = required(STR)
CURSOR = required((_nonneg_int, "an integer >= 0", True))

#: msg_type → {content field: rule}. Fields not listed are passed through unchecked.
CONTENT_RULES: dict[str, dict[str, Rule]] = {
    "execute_request": {
        "code": CODE,
        "silent": BOOL,
        "store_history": BOOL,
        "allow_stdin": BOOL,
        "stop_on_error": BOOL,
        "user_expressions": (_str_dict, "an object of strings", False),
    },
    "complete_request": {"code": CODE, "cursor_pos": CURSOR},
    "inspect_request": {"code": CODE, "cursor_pos": CURSOR, "detail_level": INT},
    "is_complete_request": {"code": CODE},
    "history_request": {
        "output": BOOL,
        "raw": BOOL,
        "hist_access_type": STR,
        "session": INT,
        "start": INT,
        "stop": INT,
        "n": INT,
        "pattern": STR,
        "unique": BOOL,
    },
    "kernel_info_request": {},
    "interrupt_request": {},
    "shutdown_request": {"restart": BOOL},
    "comm_info_request": {"target_name": STR},
    "comm_open": {
        "comm_id": required(STR),
        "target_name": required(STR),
        "target_module": (_opt_str, "a string or null", False),
        "data": DICT,
    },
    "comm_msg": {"comm_id": required(STR), "data": DICT},
    "comm_close": {"comm_id": required(STR), "data": DICT},
    "debug_request": {"seq": INT, "type": STR, "command": STR, "arguments": DICT},
    "input_reply": {"value": required(STR)},
}

#: header field → (check, description, required?)
HEADER_RULES: dict[str, Rule] = {
    "msg_id": required((lambda v: isinstance(v, str) and v != "", "a non-empty string", True)),
    "msg_type": required((lambda v: isinstance(v, str) and v != "", "a non-empty string", True)),
    "session": required(STR),
    "username": STR,
    "version": STR,
    "date": (lambda v: v is None or isinstance(v, (str, datetime)), "a string", False),
}


class BadMessage(ValueError):
    """A client message with a missing or mistyped field.

    ``field`` is the dotted path of the first bad field (``header.msg_type``,
    ``content.cursor_pos``); ``str(error)`` is the sentence sent to the client.
    """

    ename = "BadMessage"

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field} {problem}")


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check(where: str, obj: dict, rules: dict[str, Rule]) -> None:
    for name, (ok, what, needed) in rules.items():
        if name not in obj:
            if needed:
                raise BadMessage(f"{where}.{name}", "is missing")
            continue
        value = obj[name]
        if not ok(value):
            raise BadMessage(f"{where}.{name}", f"must be {what}, not {_type_name(value)}")


def validate(msg: Any, kernel_id: str | None = None) -> None:
    """Raise :class:`BadMessage` unless ``msg`` is a well-typed client message.

    Fills in what Jupyter lets a client omit: ``channel`` (shell),
    ``parent_header``, ``metadata`` and ``content`` (``{}``), ``buffers``
    (``[]``). ``kernel_id`` is the kernel the message arrived for: a message
    that names another one (a ``kernel_id`` at the top level or in its
    header) is refused rather than run here.
    """
    if not isinstance(msg, dict):
        raise BadMessage("message", f"must be an object, not {_type_name(msg)}")
    header = msg.get("header")
    if not isinstance(header, dict):
        raise BadMessage("header", f"must be an object, not {_type_name(header)}")
    _check("header", header, HEADER_RULES)
    for part in ("parent_header", "metadata", "content"):
        value = msg.setdefault(part, {})
        if value is None:
            value = msg[part] = {}
        if not isinstance(value, dict):
            raise BadMessage(part, f"must be an object, not {_type_name(value)}")
    channel = msg.setdefault("channel", "shell")
    if channel is None:
        channel = msg["channel"] = "shell"
    if channel not in CHANNELS:
        shown = repr(channel)[:40] if isinstance(channel, str) else _type_name(channel)
        raise BadMessage("channel", f"must be one of {', '.join(CHANNELS)}, not {shown}")
    buffers = msg.setdefault("buffers", [])
    if not isinstance(buffers, list) or not all(
        isinstance(b, (bytes, bytearray, memoryview)) for b in buffers
    ):
        raise BadMessage("buffers", "must be binary parts of the frame")
    if kernel_id is not None:
        for where, obj in (("kernel_id", msg), ("header.kernel_id", header)):
            if "kernel_id" in obj and obj["kernel_id"] != kernel_id:
                raise BadMessage(
                    where, f"names another kernel; this connection is to kernel {kernel_id}"
                )
    _check("content", msg["content"], CONTENT_RULES.get(header["msg_type"], {}))


@dataclass
class ErrorReply:
    """How to answer a message that failed :func:`validate`."""

    channel: str
    msg_type: str
    content: dict
    parent: dict


#: Header fields echoed as the error reply's parent_header (when they are strings).
_ECHOED = ("msg_id", "msg_type", "session", "username", "version", "date")


def error_reply(msg: Any, ename: str, evalue: str) -> ErrorReply | None:
    """The Jupyter error reply (``ename``, ``evalue``) for a refused message, or None.

    None means no reply can be addressed: log the message and drop it.

    A reply needs a ``header`` whose ``msg_id`` is a string (clients match
    replies by it) and a request (``*_request``, so that a reply is what the
    client waits for). A message whose ``msg_type`` itself is bad is answered
    with an ``error_reply`` on shell (the reply type cannot be known). The
    reply goes on the message's channel when that is valid, else on shell.
    """
    header = msg.get("header") if isinstance(msg, dict) else None
    if not isinstance(header, dict) or not isinstance(header.get("msg_id"), str):
        return None
    if not header["msg_id"]:
        return None
    msg_type = header.get("msg_type")
    if isinstance(msg_type, str) and msg_type:
        if not msg_type.endswith("_request"):
            return None  # comm_msg, input_reply...: Jupyter never answers these
        reply_type = msg_type[: -len("_request")] + "_reply"
    else:
        reply_type = "error_reply"  # as KernelSession names it
    channel = msg.get("channel")
    if channel not in CHANNELS or channel == "stdin":
        channel = "shell"
    parent = {k: header[k] for k in _ECHOED if isinstance(header.get(k), str)}
    content = {
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [f"{ename}: {evalue}"],
    }
    return ErrorReply(channel, reply_type, content, parent)

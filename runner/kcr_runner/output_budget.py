"""One output budget per cell, for every language: the runner caps what a cell may show.

Every event a worker sends passes through the runner, so the cap lives here and is the same
for Python, bash, R, Node, ... and for any future worker. A budget has two limits:

* **bytes**: the size of each output event's serialized content (the JSON text the runner
  sends to the gateway), summed over the cell: ``--max-output-bytes``, 10 MiB by default;
* **messages**: how many output events the cell sent: ``--max-output-messages``, 100,000 by
  default. Tiny messages cost the gateway and the browser far more than their bytes (a
  Jupyter envelope and a render each), so a loop calling ``display(1)`` is stopped by this
  limit long before it reaches the byte limit.

Output events are ``stream``, ``display_data``, ``update_display_data``, ``execute_result``,
``error`` and ``clear_output`` (:data:`OUTPUT_EVENTS`). Everything else passes untouched and
is not counted: ``execute_input``, ``input_request`` (a cell waiting for input must still ask),
comm messages and, of course, the reply.

When the next output event does not fit, the cell gets exactly one notice, a ``stderr``
stream event (:func:`notice_text`), and every later output event of that cell is dropped. A
``stream`` event that crosses the byte limit is cut so that the part that fits is shown; other
events are shown whole or not at all. The next cell starts with a fresh budget.

Example::

    budget = OutputBudget(max_bytes=10 * MiB, max_messages=100_000)
    for event, content_json in budget.admit("display_data", content):
        send(event, content_json)   # zero, one or two (event, JSON text) pairs
"""

from __future__ import annotations

import json
from typing import Any

MiB = 1024 * 1024

#: The events that count toward a cell's budget (and are dropped once it is spent).
OUTPUT_EVENTS = frozenset(
    {"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"}
)


def describe_bytes(size: int) -> str:
    """``10485760`` -> ``"10 MiB"``; ``5000`` -> ``"5000 bytes"``: the unit a user reads best."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
        if size >= 10 * scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def notice_text(limit: str) -> str:
    """The one line a cell gets when its output budget is spent (``limit``: "10 MiB", ...)."""
    return (
        f"\n[kcr] Output limit reached ({limit} per cell): "
        "further output of this cell is not shown.\n"
    )


def _dumps(content: Any) -> str:
    return json.dumps(content)


class OutputBudget:
    """The output budget of one cell (or of the output sent between cells).

    Contract: :meth:`admit` takes one event and returns the ``(event, content JSON)`` pairs
    to send, in order: the event itself (maybe a cut ``stream``), the notice, both, or
    nothing. Non-output events are always returned unchanged. A limit of 0 or less is
    "no limit". Not thread-safe: the runner's event loop owns it.
    """

    def __init__(self, max_bytes: int, max_messages: int):
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.used_bytes = 0
        self.used_messages = 0
        self.spent = False

    def reset(self) -> None:
        """Start again from zero (a new cell)."""
        self.used_bytes = 0
        self.used_messages = 0
        self.spent = False

    def admit(self, event: str, content: dict[str, Any]) -> list[tuple[str, str]]:
        if event not in OUTPUT_EVENTS:
            return [(event, _dumps(content))]
        if self.spent:
            return []
        if 0 < self.max_messages <= self.used_messages:
            return self._spend(f"{self.max_messages:,} messages")
        text = _dumps(content)
        room = self.max_bytes - self.used_bytes
        if self.max_bytes > 0 and len(text) > room:
            cut = self._cut_stream(event, content, room)
            out = [] if cut is None else [(event, cut)]
            return out + self._spend(describe_bytes(self.max_bytes))
        self.used_bytes += len(text)
        self.used_messages += 1
        return [(event, text)]

    def _spend(self, limit: str) -> list[tuple[str, str]]:
        self.spent = True
        return [("stream", _dumps({"name": "stderr", "text": notice_text(limit)}))]

    @staticmethod
    def _cut_stream(event: str, content: dict[str, Any], room: int) -> str | None:
        """The JSON of ``content`` with its text cut to fit ``room`` bytes (streams only)."""
        text = content.get("text")
        if event != "stream" or not isinstance(text, str):
            return None
        keep = len(text)
        while keep > 0:
            cut = _dumps({**content, "text": text[:keep]})
            excess = len(cut) - room
            if excess <= 0:
                return cut
            keep -= excess  # JSON escapes only grow text, so this converges from above
        return None

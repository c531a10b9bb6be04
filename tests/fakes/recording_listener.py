"""RecordingListener: a KernelListener double that keeps every message sent to it."""

from __future__ import annotations


class RecordingListener:
    """Implements :class:`kcr_kernels.session.KernelListener`; ``messages`` in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    def send(self, channel: str, msg: dict) -> None:
        self.messages.append((channel, msg))

    def replies_to(self, msg_id: str) -> list[dict]:
        """Non-iopub messages whose parent is ``msg_id``."""
        return [
            m
            for channel, m in self.messages
            if channel != "iopub" and m["parent_header"].get("msg_id") == msg_id
        ]

"""The kernel's shell queue: its byte count, and a message no handler expects cannot stop it."""

from __future__ import annotations

import asyncio

import pytest

from kcr_kernels.session import KernelSession
from kcr_kernels.shell_queue import ShellQueue
from tests.fakes.recording_listener import RecordingListener

pytestmark = pytest.mark.asyncio


async def test_bytes_follow_puts_and_gets():
    q = ShellQueue()
    q.put_nowait(("a", {"n": 1}, 100))
    q.put_nowait(("b", {"n": 2}, 50))
    q.put_nowait(("c", {"n": 3}))  # put again without a size: 0 bytes
    assert (q.qsize(), q.bytes) == (3, 150)
    assert q.get_nowait() == ("a", {"n": 1})
    assert q.bytes == 50
    assert await q.get() == ("b", {"n": 2})
    assert q.get_nowait() == ("c", {"n": 3})
    assert (q.qsize(), q.bytes) == (0, 0)


async def test_a_queued_message_with_a_bad_msg_type_does_not_stop_the_shell_loop():
    """Issue 12: such a message used to kill the loop (its error reply raised too)."""
    session = KernelSession("k")
    listener = RecordingListener()
    for i, msg_type in enumerate([5, ["execute_request"], {"x": 1}]):
        bad = {"header": {"msg_id": f"bad{i}", "msg_type": msg_type, "session": "s"}}
        session.handle(listener, {**bad, "channel": "shell"}, size=10)
    good = {
        "header": {"msg_id": "good", "msg_type": "kernel_info_request", "session": "s"},
        "parent_header": {},
        "metadata": {},
        "content": {},
        "channel": "shell",
    }
    session._queue.put_nowait((listener, good))  # on shell, behind the bad ones
    session._ensure_shell_loop()
    for _ in range(200):
        if listener.replies_to("good"):
            break
        await asyncio.sleep(0.01)
    assert listener.replies_to("good")[0]["msg_type"] == "kernel_info_reply"
    assert session.queued == (0, 0)
    await session.close()

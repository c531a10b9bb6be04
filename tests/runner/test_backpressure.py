"""Back-pressure inside the pod: the output of a cell whose client does not read waits in the
kernel (``display()``/``print`` block), never in unbounded ZMQ queues, and none of it is lost.

Real runner, real relay and ipykernel; the client is a real WebSocket client that stops reading
(``max_queue=1``: websockets then stops reading the socket).
"""

from __future__ import annotations

import asyncio
import json
import time

import psutil
import websockets

MB = 1024 * 1024
UNLIMITED = ("--max-output-bytes", "0", "--max-output-messages", "0")


def _pod(runner) -> list[psutil.Process]:
    """The relay and the kernel (the runner's descendants)."""
    return psutil.Process(runner.proc.pid).children(recursive=True)


def _rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


async def _until_blocked(procs: list[psutil.Process], deadline: float) -> int:
    """Wait until the pod uses no more CPU (the kernel waits on its output); the peak RSS."""
    peak, last = _rss(procs), None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        peak = max(peak, _rss(procs))
        used = sum(sum(p.cpu_times()[:2]) for p in procs)
        if last is not None and used - last < 0.02:
            break
        last = used
    return peak


async def _connect(runner):
    return await websockets.connect(
        runner.ws_url, additional_headers=runner.headers, max_size=None, max_queue=1
    )


async def _read_until_reply(ws, request_id: str, timeout: float = 60) -> tuple[list, dict]:
    events = []
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame.get("id") != request_id:
            continue
        if frame["event"] == "reply":
            return events, frame
        events.append(frame)


def _displayed(events: list) -> list[int]:
    return [
        int(e["content"]["data"]["text/plain"].rstrip("x"))
        for e in events
        if e["event"] == "display_data"
    ]


async def test_unread_display_flood_waits_in_the_kernel_and_loses_nothing(start_runner):
    runner = start_runner(*UNLIMITED)
    ws = await _connect(runner)
    try:
        procs = _pod(runner)
        before = _rss(procs)
        count, size = 600, 50_000  # 30 MB of output
        code = (
            f"for i in range({count}):\n"
            f"    display({{'text/plain': str(i).ljust({size}, 'x')}}, raw=True)\n"
        )
        await ws.send(json.dumps({"id": "flood", "op": "execute", "content": {"code": code}}))
        peak = await _until_blocked(procs, time.monotonic() + 30)
        # Without back-pressure ipykernel's and the relay's ZMQ queues hold up to 2,000
        # messages (here all 30 MB) and then drop the rest.
        grown = (peak - before) / MB
        print(f"pod RSS growth while the client did not read: {grown:.1f} MB")
        assert grown < 15, f"the pod grew by {grown:.0f} MB"
        events, reply = await _read_until_reply(ws, "flood")
        assert reply["content"]["status"] == "ok"
        shown = _displayed(events)
        assert shown == list(range(count)), f"{len(shown)} of {count} outputs, or out of order"
    finally:
        await ws.close()


async def test_a_blocked_flooding_cell_can_be_interrupted(start_runner):
    runner = start_runner(*UNLIMITED)
    ws = await _connect(runner)
    try:
        procs = _pod(runner)
        code = (
            "i = 0\n"
            "while True:\n"
            "    display({'text/plain': str(i).ljust(50_000, 'x')}, raw=True)\n"
            "    i += 1\n"
        )
        await ws.send(json.dumps({"id": "flood", "op": "execute", "content": {"code": code}}))
        await _until_blocked(procs, time.monotonic() + 30)
        # Sent while the client still reads nothing: the relay serves it although the
        # kernel's output is backed up.
        await ws.send(json.dumps({"id": "stop", "op": "interrupt"}))
        events, reply = await _read_until_reply(ws, "flood")
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        shown = _displayed(events)
        in_order = shown == list(range(len(shown)))
        assert shown and in_order, f"{len(shown)} outputs, in order: {in_order}"
        errors = [e for e in events if e["event"] == "error"]
        assert errors and errors[0]["content"]["ename"] == "KeyboardInterrupt"
    finally:
        await ws.close()

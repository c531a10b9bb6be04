"""WebSocket abuse against kcr-gateway: gateway RSS, bystander latency, what the abuser saw.

Usage::

    hatch run bench:python bench/ws_abuse_bench.py            # every abuse (about a minute)
    hatch run bench:python bench/ws_abuse_bench.py --json out.json
    hatch run bench:python bench/ws_abuse_bench.py --only flood,sockets

Starts kcr-gateway (``python -m kcr_gateway.app``, default WebSocket limits,
local sandboxed pods) as a subprocess on a free 127.0.0.1 port, a bystander
kernel with its own WebSocket, and an abused kernel. For each abuse, while it
runs, ``GET /api`` is timed every 50 ms, the bystander runs ``1+1`` back to
back, and the gateway's RSS is sampled every 20 ms (psutil). Printed per
abuse: RSS before / peak / growth, ``GET /api`` and bystander ``1+1`` p99,
and what the abusing client saw (close codes, replies).

Abuses: JSON text frames on v1; v1 and legacy frames claiming huge offset
counts; frames of exactly the size limit and one byte over; 2,000 malformed
messages; 1,000 WebSockets on one kernel; 10,000 frames per second for 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ManagedProcess, free_port, machine_info, machine_line, rss_bytes, summarize_ms

V1 = "v1.kernel.websocket.jupyter.org"
MAX_MESSAGE = 10 * 1024 * 1024  # the gateway's default websocket_max_message_size


def message(msg_type="execute_request", content=None, session="bench") -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": "bench",
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": "1+1"} if content is None else content,
        "channel": "shell",
    }


class Client:
    """A legacy-JSON kernel WebSocket that can run a cell and wait for its reply."""

    def __init__(self, ws):
        self.ws = ws
        self.waiting: dict[str, asyncio.Future] = {}
        self.on_reply = None  # called with every shell reply nobody waits for
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, base: str, kernel_id: str) -> Client:
        # iopub echoes a cell's code (execute_input): room for a cell of the gateway's limit
        ws = await websocket_connect(ws_url(base, kernel_id), max_message_size=4 * MAX_MESSAGE)
        ws.protocol.stream.set_nodelay(True)
        return cls(ws)

    async def _read(self):
        while (raw := await self.ws.read_message()) is not None:
            msg = json.loads(raw)
            future = self.waiting.get(msg["parent_header"].get("msg_id"))
            if future is not None and msg["channel"] == "shell" and not future.done():
                future.set_result(msg)
            elif future is None and msg["channel"] == "shell" and self.on_reply is not None:
                self.on_reply(msg)

    async def execute(self, code: str, timeout: float = 60) -> dict:
        m = message(content={"code": code})
        future = self.waiting[m["header"]["msg_id"]] = asyncio.get_running_loop().create_future()
        await self.ws.write_message(json.dumps(m))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            del self.waiting[m["header"]["msg_id"]]

    def close(self):
        self.ws.close()
        self.reader.cancel()


def ws_url(base: str, kernel_id: str) -> str:
    return base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"


async def closed_with(ws, timeout: float = 30) -> int | None:
    while await asyncio.wait_for(ws.read_message(), timeout) is not None:
        pass
    return ws.close_code


async def one_frame(base, kernel_id, frame, v1: bool) -> str:
    ws = await websocket_connect(ws_url(base, kernel_id), subprotocols=[V1] if v1 else None)
    await ws.write_message(frame, binary=isinstance(frame, bytes))
    return f"close {await closed_with(ws)}"


async def abuse_v1_text(base, kernel_id):
    seen = collections.Counter()
    for _ in range(100):
        seen[await one_frame(base, kernel_id, json.dumps(message()), True)] += 1
    return dict(seen)


async def abuse_huge_counts(base, kernel_id):
    frames = [
        (True, struct.pack("<QQ", 2**63 - 1, 0)),
        (True, struct.pack("<Q", 2**24) + b"\0" * 8 * 1000),
        (True, struct.pack("<Q", 2**25) + b"\0" * (1024 * 1024)),
        (False, struct.pack("!iI", 2**31 - 1, 8) + b"{}"),
        (False, struct.pack("!i", 2**24) + b"\0" * 4 * 1000),
        (False, struct.pack("!i", 2**25) + b"\0" * (1024 * 1024)),
    ]
    seen = collections.Counter()
    for _ in range(20):
        for v1, frame in frames:
            seen[await one_frame(base, kernel_id, frame, v1)] += 1
    return dict(seen)


async def abuse_size_limit(base, kernel_id):
    """kernel_info_requests padded (in metadata) to exactly the limit and one byte over.

    kernel_info is answered by the gateway, so this measures the gateway, not how long
    the kernel takes over a 10 MiB cell.
    """
    seen = collections.Counter()
    for extra in (0, 1) * 5:
        m = message("kernel_info_request", {})
        m["metadata"]["pad"] = ""
        m["metadata"]["pad"] = "x" * (MAX_MESSAGE + extra - len(json.dumps(m).encode()))
        client = await Client.open(base, kernel_id)
        try:
            future = client.waiting[m["header"]["msg_id"]] = (
                asyncio.get_running_loop().create_future()
            )
            with contextlib.suppress(WebSocketClosedError):
                await client.ws.write_message(json.dumps(m))
            done, _ = await asyncio.wait(
                [future, client.reader], timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            if future in done:
                seen[f"{MAX_MESSAGE + extra} B: {future.result()['msg_type']}"] += 1
            else:
                seen[f"{MAX_MESSAGE + extra} B: close {client.ws.close_code}"] += 1
        finally:
            client.close()
    return dict(seen)


async def abuse_malformed(base, kernel_id):
    client = await Client.open(base, kernel_id)
    seen = collections.Counter()
    try:
        bad = []
        for i in range(2000):
            m = message()
            field = ("msg_type", "session", "username", "date")[i % 4]
            m["header"][field] = [i]
            bad.append(m)
        futures = []
        for m in bad:
            f = client.waiting[m["header"]["msg_id"]] = asyncio.get_running_loop().create_future()
            futures.append(f)
            await client.ws.write_message(json.dumps(m))
        for f in futures:
            reply = await asyncio.wait_for(f, 60)
            seen[f"{reply['msg_type']} {reply['content'].get('ename')}"] += 1
        ok = await client.execute("1+1")
        seen[f"then 1+1: {ok['content']['status']}"] += 1
    finally:
        client.close()
    return dict(seen)


async def abuse_sockets(base, kernel_id):
    kept, seen = [], collections.Counter()

    async def one():
        ws = await websocket_connect(ws_url(base, kernel_id))
        await ws.write_message(json.dumps(message("kernel_info_request", {})))
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 60)
            if raw is None:
                seen[f"close {ws.close_code} {ws.close_reason}"] += 1
                return
            if json.loads(raw)["msg_type"] == "kernel_info_reply":
                kept.append(ws)
                seen["accepted"] += 1
                return

    for _ in range(10):
        await asyncio.gather(*(one() for _ in range(100)))
    for ws in kept:
        ws.close()
    return dict(seen)


async def abuse_flood(base, kernel_id):
    """10,000 frames per second for 2 s (paced in 10 ms slices), then wait for the end.

    The gateway takes one frame per event-loop turn, so when it handles fewer frames per
    second than the client sends, TCP back-pressure slows the client down; once more than
    ``frame_burst`` + ``max_frames_per_second`` x seconds were handled it closes with 1008.
    The abuse ends when every frame got its reply or the socket closed.
    """
    client = await Client.open(base, kernel_id)
    replies = collections.Counter()
    seen = collections.Counter()
    sent = 0
    start = time.monotonic()

    def count(msg):
        replies[msg["content"].get("ename") or msg["content"].get("status")] += 1

    client.on_reply = count
    try:
        while time.monotonic() - start < 2 and client.ws.protocol is not None:
            target = int((time.monotonic() - start) * 10_000)
            while sent < target:
                client.ws.write_message(json.dumps(message(content={"code": "pass"})))
                sent += 1
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 120  # every frame answered, or the socket closed
        while sum(replies.values()) < sent and not client.reader.done():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    except WebSocketClosedError:
        pass
    took = time.monotonic() - start
    seen[
        f"sent {sent} frames; after {took:.1f}s close {client.ws.close_code} "
        f"{client.ws.close_reason}; replies {dict(replies)}"
    ] += 1
    client.close()
    return dict(seen)


ABUSES = {
    "v1-text": abuse_v1_text,
    "huge-counts": abuse_huge_counts,
    "size-limit": abuse_size_limit,
    "malformed": abuse_malformed,
    "sockets": abuse_sockets,
    "flood": abuse_flood,
}


async def probe(base: str, kernel_id: str) -> None:
    """``--probe`` mode, in its own process so the abuser's client work cannot skew it:
    time ``GET /api`` and a bystander ``1+1`` in turn until SIGTERM; print them as JSON."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    http = AsyncHTTPClient()
    bystander = await Client.open(base, kernel_id)
    await bystander.execute("1+1")
    print("ready", flush=True)
    api, cells = [], []
    while not stop.is_set():
        t = time.perf_counter()
        await http.fetch(HTTPRequest(base + "/api", request_timeout=60))
        api.append(time.perf_counter() - t)
        t = time.perf_counter()
        reply = await bystander.execute("1+1")
        assert reply["content"]["status"] == "ok", reply
        cells.append(time.perf_counter() - t)
        await asyncio.sleep(0.02)
    bystander.close()
    print(json.dumps({"api": api, "cells": cells}), flush=True)


async def measure(base, gateway_pid, bystander_id, abused_id, name, abuse) -> dict:
    prober = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", base, bystander_id, stdout=asyncio.subprocess.PIPE
    )
    if (await prober.stdout.readline()).strip() != b"ready":
        raise RuntimeError("the probe process failed")
    rss, stop = [], asyncio.Event()

    async def sample_rss():
        while not stop.is_set():
            rss.append(rss_bytes(gateway_pid))
            await asyncio.sleep(0.02)

    before = rss_bytes(gateway_pid)
    sampler = asyncio.ensure_future(sample_rss())
    t = time.perf_counter()
    try:
        saw = await abuse(base, abused_id)
    finally:
        took = time.perf_counter() - t
        stop.set()
        await sampler
        prober.send_signal(signal.SIGTERM)
        output, _ = await prober.communicate()
    probed = json.loads(output)
    peak = max([before, *rss])
    return {
        "abuse": name,
        "seconds": round(took, 2),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "rss_growth_mib": round((peak - before) / 2**20, 1),
        "get_api": summarize_ms(probed["api"]),
        "bystander_1plus1": summarize_ms(probed["cells"]),
        "abuser_saw": saw,
    }


async def start_kernel(base: str) -> str:
    r = await AsyncHTTPClient().fetch(
        HTTPRequest(base + "/api/kernels", method="POST", body=json.dumps({"name": "kcr-python"}))
    )
    return json.loads(r.body)["id"]


async def wait_up(base: str, process: ManagedProcess) -> None:
    for _ in range(600):
        process.check_alive()
        try:
            r = await AsyncHTTPClient().fetch(base + "/readyz", raise_error=False)
            if r.code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("kcr-gateway did not get ready")


async def main(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="kcr-wsabuse-"))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "kcr_gateway.app",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--data-dir={work / 'data'}",
        "--KCRGateway.pools=" + json.dumps({"python": {"warm": 2}}),
        "--KCRGateway.auth_token=",
    ]
    if args.allow_unsandboxed:
        argv.append("--allow-unsandboxed")
    base = f"http://127.0.0.1:{port}"
    results = []
    with ManagedProcess("kcr-gateway", argv, work / "gateway.log") as gateway:
        await wait_up(base, gateway)
        bystander = await start_kernel(base)
        abused = await start_kernel(base)
        for name, abuse in ABUSES.items():
            if args.only and name not in args.only:
                continue
            result = await measure(base, gateway.pid, bystander, abused, name, abuse)
            results.append(result)
            print(
                f"{name:12} {result['seconds']:6.2f}s  RSS {result['rss_before_mib']:6.1f} -> "
                f"peak {result['rss_peak_mib']:6.1f} MiB (+{result['rss_growth_mib']:5.1f})  "
                f"GET /api p99 {result['get_api']['p99_ms']:6.1f} ms  "
                f"bystander 1+1 p99 {result['bystander_1plus1']['p99_ms']:6.1f} ms  "
                f"abuser saw {result['abuser_saw']}",
                flush=True,
            )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", type=lambda s: set(s.split(",")), default=None)
    parser.add_argument("--allow-unsandboxed", action="store_true")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        sys.exit(asyncio.run(probe(*args.probe)))
    print(machine_line(machine_info(["tornado", "jupyter_server"])))
    results = asyncio.run(main(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

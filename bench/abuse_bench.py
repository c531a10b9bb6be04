"""Robustness: what one abusive client or kernel does to the gateway and to everyone else.

Usage::

    hatch run bench:abuse                       # every abuse (a few minutes)
    hatch run bench:abuse --only balloon,delete # some of them
    hatch run bench:abuse --json results.json   # also save every figure

Each abuse gets a fresh ``kcr-gateway`` (local sandboxed pods, a warm pool of 2, on a free
127.0.0.1 port) with two kernels: a *bystander* and the *abuser*. While the abuse runs,
the bench measures, every 0.2 s:

* the gateway's RSS (sampled every 0.05 s; growth = peak - RSS just before the abuse);
* a bystander ``1+1`` (``execute_request`` -> reply + idle, over its own WebSocket);
* ``GET /api``.

A probe that gets no answer within 3 s counts as 3 s. The abuse itself runs in a separate
process (``--worker``), so the probes' timings are not the abusing client's event loop;
that process reports what the abusing kernel's user saw (a close code, an error, a reply).

Targets, for every abuse: gateway RSS growth <= 64 MiB, bystander p99 <= 50 ms,
``GET /api`` p99 <= 50 ms. The table says PASS/FAIL per target.

Bounded and self-stopping: every abuse is bounded in count and seconds, the worker is
killed after its budget, and the gateway runs in a memory cgroup of its own (3 GiB, where
this host gives one) and is killed by the bench once its RSS grew by more than 1 GiB --
reported as such. Loopback only. Everything started is stopped at the end, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ManagedProcess,
    free_port,
    kcr_gateway_argv,
    kcr_gateway_env,
    machine_info,
    machine_line,
    percentile,
)
from gateway_bench import BenchError, Gateway, WSKernelClient, new_message

MIB = 1024 * 1024
PROBE_EVERY = 0.2
PROBE_TIMEOUT = 3.0
RSS_EVERY = 0.05
#: The bench kills a gateway whose RSS grew by more than this (it would take the host down).
RSS_KILL = 1024 * MIB
#: Memory cgroup cap of the gateway under test (with its pods), where the host has one.
GATEWAY_CGROUP_CAP = 3 * 1024 * MIB
TARGET_RSS_MIB = 64
TARGET_P99_MS = 50
V1 = "v1.kernel.websocket.jupyter.org"
THIS_FILE = str(Path(__file__).resolve())
#: Joins every given cgroup folder, then execs the command after ``--``.
JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done; shift; exec "$@"'


# -- the abuses (run in the worker process) ----------------------------------------------


def _ws_url(url: str, kernel_id: str) -> str:
    return url.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"


def _execute(code: str, session: str = "abuse") -> dict:
    return new_message(
        "execute_request",
        {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
        session,
    )


async def _close_or_silence(ws, seconds: float) -> str:
    """Read until the server closes the socket or ``seconds`` pass; describe which."""
    import websockets

    deadline = time.monotonic() + seconds
    frames = 0
    try:
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.01))
                frames += 1
            except TimeoutError:
                break
    except websockets.ConnectionClosed as e:
        rcvd = e.rcvd
        code = rcvd.code if rcvd else "none"
        reason = (rcvd.reason if rcvd else "") or "no reason"
        return f"closed {code} ({reason}) after {frames} frames"
    return f"socket still open after {seconds:.0f} s, {frames} frames, no close"


async def abuse_v1_text_frame(url: str, kernel_id: str, seconds: float) -> str:
    """A JSON *text* frame on the v1 subprotocol (whose frames must be binary)."""
    import websockets

    async with websockets.connect(
        _ws_url(url, kernel_id), subprotocols=[V1], max_size=None, open_timeout=10
    ) as ws:
        await ws.send(json.dumps(_execute("1+1")))
        return await _close_or_silence(ws, seconds)


async def abuse_legacy_buffer_count(url: str, kernel_id: str, seconds: float) -> str:
    """A legacy binary frame that claims 2^24 buffers (its offsets would be 64 MiB)."""
    import websockets

    async with websockets.connect(_ws_url(url, kernel_id), max_size=None, open_timeout=10) as ws:
        await ws.send(struct.pack("!I", 2**24) + json.dumps(_execute("1+1")).encode())
        return await _close_or_silence(ws, seconds)


def _flood_code(size: int, seconds: float) -> str:
    return (
        "import time\n"
        "from IPython.display import display\n"
        f"payload = {{'text/plain': 'x' * {size}}}\n"
        "n, end = 0, time.monotonic() + " + f"{seconds}\n"
        "while time.monotonic() < end:\n"
        "    display(payload, raw=True)\n"
        "    n += 1\n"
        "print('displayed', n)\n"
    )


async def _flood(url: str, kernel_id: str, seconds: float, size: int, reading: bool) -> str:
    import websockets

    cell_seconds = max(seconds - 4, 1)
    async with websockets.connect(
        _ws_url(url, kernel_id), max_size=None, max_queue=1 if not reading else 64
    ) as ws:
        msg = _execute(_flood_code(size, cell_seconds))
        await ws.send(json.dumps(msg))
        if not reading:  # never reads: the server must bound what it holds for us
            await asyncio.sleep(seconds)
            if ws.close_code is not None:
                return (
                    f"closed {ws.close_code} ({ws.close_reason or 'no reason'}) while not reading"
                )
            return f"socket still open after {seconds:.0f} s of not reading"
        outputs = truncated = 0
        deadline = time.monotonic() + seconds + 10
        try:
            while time.monotonic() < deadline:
                frame = json.loads(
                    await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.01))
                )
                if (frame.get("parent_header") or {}).get("msg_id") != msg["header"]["msg_id"]:
                    continue
                kind = frame.get("msg_type") or frame["header"]["msg_type"]
                if kind == "display_data":
                    outputs += 1
                elif kind == "stream" and "Output limit reached" in frame["content"].get(
                    "text", ""
                ):
                    truncated += 1
                elif kind == "execute_reply":
                    status = frame["content"].get("status")
                    notice = "with a truncation notice" if truncated else "no truncation notice"
                    return f"reply {status} after {outputs} displays, {notice}"
        except TimeoutError:
            return f"no reply within {seconds + 10:.0f} s ({outputs} displays read)"
        except websockets.ConnectionClosed as e:
            rcvd = e.rcvd
            return f"closed {rcvd.code if rcvd else 'none'} after {outputs} displays, no reply"
        return f"no reply within {seconds + 10:.0f} s ({outputs} displays read)"


async def abuse_flood_100k_reading(url, kernel_id, seconds):
    return await _flood(url, kernel_id, seconds, 100_000, True)


async def abuse_flood_100k_not_reading(url, kernel_id, seconds):
    return await _flood(url, kernel_id, seconds, 100_000, False)


async def abuse_flood_1k_reading(url, kernel_id, seconds):
    return await _flood(url, kernel_id, seconds, 1_000, True)


async def abuse_flood_1k_not_reading(url, kernel_id, seconds):
    return await _flood(url, kernel_id, seconds, 1_000, False)


BALLOON = """
import subprocess, sys
child = '''
import time
share = bytearray({share})
for i in range(0, len(share), 4096):
    share[i] = 1
time.sleep(3)
'''
procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(3)]
print("exit codes", [p.wait() for p in procs])
"""


async def _cell(url: str, kernel_id: str, code: str, timeout: float) -> tuple[dict, float]:
    client = await WSKernelClient.connect(_ws_url(url, kernel_id))
    try:
        t0 = time.perf_counter()
        pending = await client.request(
            "execute_request",
            {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
            timeout,
        )
        return pending.reply["content"], time.perf_counter() - t0
    finally:
        client.close()


async def abuse_balloon(url: str, kernel_id: str, seconds: float) -> str:
    """Three processes, each touching 40% of the kernel's 256 MiB cap."""
    code = BALLOON.format(share=int(256 * MIB * 0.4))
    try:
        reply, took = await _cell(url, kernel_id, code, seconds)
    except BenchError as e:
        return f"no reply: {e}"
    if reply.get("status") == "ok":
        return f"NOT stopped: reply ok after {took:.1f} s"
    return f"after {took:.1f} s: {reply.get('ename')}: {reply.get('evalue')}"


async def abuse_files(url: str, kernel_id: str, seconds: float) -> str:
    """20,000 small files written by one cell; then how long the kernel's next cell waits."""
    code = (
        "import os\nos.makedirs('many', exist_ok=True)\n"
        "for i in range(20000):\n"
        "    with open(f'many/f{i}.txt', 'w') as f:\n"
        "        f.write(str(i))\n"
        "print('written')"
    )
    t0 = time.monotonic()
    try:
        reply, took = await _cell(url, kernel_id, code, seconds)
    except BenchError:
        return f"the cell got no reply within {seconds:.0f} s"
    try:
        _, next_took = await _cell(url, kernel_id, "1+1", max(seconds - (time.monotonic() - t0), 1))
    except BenchError:
        return f"cell {reply.get('status')} in {took:.1f} s; the next cell got no reply in time"
    return f"cell {reply.get('status')} in {took:.1f} s; next cell answered {next_took:.1f} s later"


async def abuse_websockets(url: str, kernel_id: str, seconds: float) -> str:
    """1,000 WebSockets to one kernel, held open a few seconds."""
    import websockets

    async def one():
        return await websockets.connect(_ws_url(url, kernel_id), open_timeout=seconds)

    results = await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = {}
    for r in results:
        if isinstance(r, BaseException):
            key = type(r).__name__ + (
                f" {r.response.status_code}" if hasattr(r, "response") else ""
            )
            errors[key] = errors.get(key, 0) + 1
    await asyncio.sleep(2)
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    refused = ", ".join(f"{n} x {k}" for k, n in errors.items()) or "none refused"
    return f"{len(opened)} of 1000 opened ({refused})"


async def abuse_frames(url: str, kernel_id: str, seconds: float) -> str:
    """10,000 frames/s (kernel_info_request) on one socket for a few seconds."""
    import websockets

    rate, duration = 10_000, min(3.0, seconds / 2)
    replies = 0
    async with websockets.connect(_ws_url(url, kernel_id), max_size=None) as ws:

        async def drain():
            nonlocal replies
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    replies += 1

        reader = asyncio.ensure_future(drain())
        frame = json.dumps(new_message("kernel_info_request", {}, "abuse"))
        sent, t0 = 0, time.monotonic()
        try:
            while time.monotonic() - t0 < duration:
                for _ in range(100):
                    await ws.send(frame)
                    sent += 1
                behind = sent / rate - (time.monotonic() - t0)
                if behind > 0:
                    await asyncio.sleep(behind)
        except websockets.ConnectionClosed as e:
            rcvd = e.rcvd
            reader.cancel()
            return f"closed {rcvd.code if rcvd else 'none'} after {sent} frames"
        achieved = sent / (time.monotonic() - t0)
        await asyncio.sleep(min(5.0, seconds - duration))
        reader.cancel()
        return f"{sent} frames sent ({achieved:,.0f}/s), {replies} messages back"


async def abuse_delete_with_bad_queued(url: str, kernel_id: str, seconds: float) -> str:
    """DELETE while a malformed request waits behind a running cell."""
    import websockets

    http = AsyncHTTPClient()
    async with websockets.connect(_ws_url(url, kernel_id), max_size=None) as ws:
        await ws.send(json.dumps(_execute("import time; time.sleep(2)")))
        bad = _execute("1+1")
        bad["header"]["msg_type"] = 42  # a number where the protocol has a string
        bad["content"] = {"code": 42, "silent": "yes"}
        await ws.send(json.dumps(bad))
        await asyncio.sleep(0.3)
        response = await http.fetch(
            f"{url}/api/kernels/{kernel_id}", method="DELETE", raise_error=False, request_timeout=30
        )
    body = response.body.decode(errors="replace")
    try:
        parsed = json.loads(body or "{}")
        body_kind = "JSON" if body else "empty"
        if isinstance(parsed, dict) and parsed.get("traceback"):
            body_kind += " with a traceback"
    except ValueError:
        body_kind = "not JSON" + (" (traceback)" if "Traceback" in body else "")
    await asyncio.sleep(1)
    pools = json.loads((await http.fetch(f"{url}/api/kcr/pools")).body)
    leased = sum(p.get("leased", 0) for p in pools.values())
    # The bystander holds one pod: more than one leased means the deleted kernel's leaked.
    leak = "pod released" if leased <= 1 else f"{leased - 1} pod(s) still leased"
    return f"DELETE {response.code} {body_kind}; {leak}"


async def abuse_quiet(url: str, kernel_id: str, seconds: float) -> str:
    """No abuse: the probes alone, so the table shows this machine's noise floor."""
    await asyncio.sleep(seconds)
    return "nothing (the probes alone: this machine's noise floor)"


def _count(seen: dict, key: str) -> None:
    seen[key] = seen.get(key, 0) + 1


def _described(seen: dict) -> str:
    return ", ".join(f"{n} x {key}" for key, n in seen.items())


async def abuse_huge_counts(url: str, kernel_id: str, seconds: float) -> str:
    """v1 and legacy binary frames whose offset counts claim far more than they hold."""
    import websockets

    frames = [
        (True, struct.pack("<QQ", 2**63 - 1, 0)),
        (True, struct.pack("<Q", 2**24) + b"\0" * 8 * 1000),
        (True, struct.pack("<Q", 2**25) + b"\0" * (1024 * 1024)),
        (False, struct.pack("!iI", 2**31 - 1, 8) + b"{}"),
        (False, struct.pack("!i", 2**24) + b"\0" * 4 * 1000),
        (False, struct.pack("!i", 2**25) + b"\0" * (1024 * 1024)),
    ]
    seen: dict = {}
    deadline = time.monotonic() + seconds
    for _ in range(10):
        for v1, frame in frames:
            if time.monotonic() > deadline:
                break
            async with websockets.connect(
                _ws_url(url, kernel_id), subprotocols=[V1] if v1 else None, open_timeout=10
            ) as ws:
                await ws.send(frame)
                outcome = await _close_or_silence(ws, 5)
            _count(seen, outcome.split(" (")[0] if outcome.startswith("closed") else outcome)
    return _described(seen)


async def abuse_size_limit(url: str, kernel_id: str, seconds: float) -> str:
    """``kernel_info_request`` frames padded to exactly the 10 MiB limit and one byte over."""
    import websockets

    limit = 10 * MIB  # the gateway's default websocket_max_message_size
    seen: dict = {}
    for extra in (0, 1) * 3:
        msg = new_message("kernel_info_request", {}, "abuse")
        msg["metadata"]["pad"] = ""
        msg["metadata"]["pad"] = "x" * (limit + extra - len(json.dumps(msg).encode()))
        try:
            async with websockets.connect(
                _ws_url(url, kernel_id), max_size=None, compression=None
            ) as ws:
                await ws.send(json.dumps(msg))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), seconds))
                    if frame.get("msg_type") == "kernel_info_reply":
                        _count(seen, f"{limit + extra} B: kernel_info_reply")
                        break
        except websockets.ConnectionClosed as e:
            _count(seen, f"{limit + extra} B: closed {e.rcvd.code if e.rcvd else 'none'}")
        except TimeoutError:
            _count(seen, f"{limit + extra} B: no answer")
    return _described(seen)


async def abuse_malformed(url: str, kernel_id: str, seconds: float) -> str:
    """2,000 messages with a mistyped header field each; then a good ``1+1``."""
    import websockets

    seen: dict = {}
    async with websockets.connect(_ws_url(url, kernel_id), max_size=None) as ws:
        ids = set()
        for i in range(2000):
            msg = _execute("1+1")
            msg["header"][("msg_type", "session", "username", "date")[i % 4]] = [i]
            ids.add(msg["header"]["msg_id"])
            await ws.send(json.dumps(msg))
        good = _execute("1+1")
        await ws.send(json.dumps(good))
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
                parent = (frame.get("parent_header") or {}).get("msg_id")
                if frame.get("channel") != "shell":
                    continue
                if parent in ids:
                    _count(seen, f"{frame['msg_type']} {frame['content'].get('ename')}")
                elif parent == good["header"]["msg_id"]:
                    _count(seen, f"then 1+1: {frame['content'].get('status')}")
                    break
        except (TimeoutError, websockets.ConnectionClosed) as e:
            _count(seen, f"stopped: {type(e).__name__}")
    return _described(seen)


@dataclass
class Abuse:
    key: str
    label: str
    run: object
    seconds: float = 10.0
    memory: str = "2Gi"


ABUSES = [
    Abuse("quiet", "no abuse (this machine's noise floor)", abuse_quiet, 8),
    Abuse("v1-text", "v1 JSON text frame", abuse_v1_text_frame, 8),
    Abuse("legacy-buffers", "legacy frame, 2^24 buffers", abuse_legacy_buffer_count, 8),
    Abuse("flood-100k-read", "display 100 KB, reading", abuse_flood_100k_reading, 10),
    Abuse("flood-100k-noread", "display 100 KB, not reading", abuse_flood_100k_not_reading, 10),
    Abuse("flood-1k-read", "display 1 KB, reading", abuse_flood_1k_reading, 10),
    Abuse("flood-1k-noread", "display 1 KB, not reading", abuse_flood_1k_not_reading, 10),
    Abuse("balloon", "memory balloon, 3 processes", abuse_balloon, 30, memory="256Mi"),
    Abuse("files", "20,000 small files", abuse_files, 60),
    Abuse("websockets", "1,000 WebSockets", abuse_websockets, 20),
    Abuse("frames", "10,000 frames/s", abuse_frames, 10),
    Abuse("delete", "DELETE, malformed request queued", abuse_delete_with_bad_queued, 15),
    Abuse("huge-counts", "huge offset counts, 6 kinds x 10", abuse_huge_counts, 30),
    Abuse("size-limit", "frames of exactly 10 MiB and one byte over", abuse_size_limit, 30),
    Abuse("malformed", "2,000 malformed messages", abuse_malformed, 30),
]
BY_KEY = {a.key: a for a in ABUSES}


def worker_main(key: str, url: str, kernel_id: str, seconds: float) -> int:
    abuse = BY_KEY[key]

    async def run() -> str:
        try:
            return await asyncio.wait_for(abuse.run(url, kernel_id, seconds), seconds + 20)
        except TimeoutError:
            return f"the abusing client got nothing conclusive within {seconds + 20:.0f} s"
        except Exception as e:  # what the user saw is the finding, whatever it is
            return f"{type(e).__name__}: {e}"

    print(json.dumps({"saw": asyncio.run(run())}), flush=True)
    return 0


# -- the gateway under test --------------------------------------------------------------


class GatewayCgroup:
    """A memory cgroup for the gateway under test, so no abuse can exhaust the host."""

    def __init__(self) -> None:
        from kcr_kernels.backends.cgroups import PodCgroups

        self.cgroups = PodCgroups()
        self.cgroup = self.cgroups.create(
            f"bench-{os.getpid()}-{secrets.token_hex(3)}", memory_max=GATEWAY_CGROUP_CAP
        )

    def prefix(self) -> list[str]:
        if self.cgroup is None:
            return []
        folders = [str(f) for f in self.cgroup.folders]
        script = (
            'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done; shift; exec "$@"'
        )
        return ["/bin/sh", "-c", script, "bench-cgroup", *folders, "--"]

    def remove(self) -> None:
        """Kill what is left in it and remove it with the pod cgroups nested inside."""
        if self.cgroup is None:
            return
        for _ in range(100):
            self.cgroup.kill_all()
            for folder in self.cgroup.folders:
                nested = [p for p in folder.rglob("*") if p.is_dir()]
                for sub in sorted(nested, key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            if self.cgroup.remove():
                return
            time.sleep(0.05)


def start_gateway(workdir: Path, memory: str, cgroup: GatewayCgroup, allow_unsandboxed: bool):
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="kcr-data-", dir=workdir))
    pools = {"python": {"warm": 2, "memory": memory}}
    argv = [
        *cgroup.prefix(),
        *kcr_gateway_argv(port, data_dir, pools, allow_unsandboxed=allow_unsandboxed),
    ]
    log = workdir / f"kcr-gateway-{port}.log"
    process = ManagedProcess("kcr-gateway", argv, log, env=kcr_gateway_env())
    return Gateway("kcr", "kcr-python", process, port, pooled=True)


def gateway_pid(gw: Gateway) -> int:
    """The Python gateway process (the launcher shell execs into it)."""
    return gw.process.pid


# -- probes ------------------------------------------------------------------------------


@dataclass
class Probes:
    rss: list[int] = field(default_factory=list)
    bystander: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    killed_at: int | None = None


async def probe_bystander(client: WSKernelClient, out: list[float], stop: asyncio.Event):
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            await client.request(
                "execute_request",
                {"code": "1+1", "silent": False, "store_history": False, "allow_stdin": False},
                PROBE_TIMEOUT,
            )
            out.append(time.perf_counter() - t0)
        except BenchError:
            out.append(PROBE_TIMEOUT)
            if client.conn.close_code is not None:  # gateway gone: every later probe fails too
                await asyncio.sleep(PROBE_TIMEOUT)
        await asyncio.sleep(PROBE_EVERY)


async def probe_api(url: str, out: list[float], stop: asyncio.Event):
    http = AsyncHTTPClient()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            await http.fetch(f"{url}/api", request_timeout=PROBE_TIMEOUT)
            out.append(time.perf_counter() - t0)
        except (HTTPClientError, OSError, TimeoutError):
            out.append(PROBE_TIMEOUT)
            await asyncio.sleep(max(0.0, PROBE_TIMEOUT - (time.perf_counter() - t0)))
        await asyncio.sleep(PROBE_EVERY)


async def sample_rss(pid: int, base: int, probes: Probes, stop: asyncio.Event, gw: Gateway):
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            return
        probes.rss.append(rss)
        if rss - base > RSS_KILL and probes.killed_at is None:
            probes.killed_at = rss
            gw.remember_descendants()
            await asyncio.to_thread(gw.process.stop, 1.0)
            return
        await asyncio.sleep(RSS_EVERY)


# -- one abuse ---------------------------------------------------------------------------


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


async def run_worker(abuse: Abuse, url: str, kernel_id: str) -> str:
    argv = [
        sys.executable,
        THIS_FILE,
        "--worker",
        abuse.key,
        "--url",
        url,
        "--kernel",
        kernel_id,
        "--seconds",
        str(abuse.seconds),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), abuse.seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"(the abusing client was killed after {abuse.seconds + 30:.0f} s)"
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            return json.loads(line)["saw"]
    return f"(the abusing client failed: {err.decode(errors='replace').strip()[-300:]})"


async def run_abuse(abuse: Abuse, workdir: Path, allow_unsandboxed: bool) -> dict:
    cgroup = await asyncio.to_thread(GatewayCgroup)
    gw = start_gateway(workdir, abuse.memory, cgroup, allow_unsandboxed)
    probes = Probes()
    saw = ""
    bystander = None
    try:
        await gw.wait_listening()
        await gw.wait_pool_full()
        _, bystander, _ = await gw.start_ready()
        abuser_id, abuser, _ = await gw.start_ready()
        abuser.close()  # the worker opens its own sockets
        for _ in range(5):  # warm the bystander's path
            await bystander.execute("1+1")
        await gw.wait_pool_full()
        await asyncio.sleep(1.0)
        pid = gateway_pid(gw)
        base = psutil.Process(pid).memory_info().rss
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(probe_bystander(bystander, probes.bystander, stop)),
            asyncio.ensure_future(probe_api(gw.url, probes.api, stop)),
            asyncio.ensure_future(sample_rss(pid, base, probes, stop, gw)),
        ]
        t0 = time.monotonic()
        saw = await run_worker(abuse, gw.url, abuser_id)
        # Keep probing a little: effects that outlast the abusing client count too.
        await asyncio.sleep(max(0.0, min(2.0, abuse.seconds - (time.monotonic() - t0))) + 1.0)
        stop.set()
        await asyncio.wait(tasks, timeout=PROBE_TIMEOUT + 2)
        for task in tasks:
            task.cancel()
        if probes.killed_at is not None:
            saw += f" [gateway killed by the bench at {probes.killed_at / MIB:,.0f} MiB RSS]"
        elif gw.process.proc.poll() is not None:
            saw += f" [gateway exited with code {gw.process.proc.returncode}]"
        return {
            "key": abuse.key,
            "label": abuse.label,
            "rss_base_mib": base / MIB,
            "rss_peak_mib": max(probes.rss, default=base) / MIB,
            "rss_growth_mib": (max(probes.rss, default=base) - base) / MIB,
            "bystander_p50_ms": percentile(probes.bystander, 50) * 1e3,
            "bystander_p99_ms": percentile(probes.bystander, 99) * 1e3,
            "bystander_n": len(probes.bystander),
            "bystander_ms": [round(v * 1e3, 1) for v in probes.bystander],
            "api_p50_ms": percentile(probes.api, 50) * 1e3,
            "api_p99_ms": percentile(probes.api, 99) * 1e3,
            "api_n": len(probes.api),
            "api_ms": [round(v * 1e3, 1) for v in probes.api],
            "load_average": os.getloadavg()[0],
            "killed": probes.killed_at is not None,
            "saw": saw,
        }
    finally:
        if bystander is not None:
            bystander.close()
        gw.remember_descendants()
        await asyncio.to_thread(gw.process.stop, 10.0)
        await asyncio.to_thread(cgroup.remove)


# -- report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(results: list[dict]) -> str:
    lines = [
        "| abuse | gateway RSS peak (growth) | bystander `1+1` p50 / p99 | `GET /api` p50 / p99 "
        "| load | what the abusing kernel's user saw |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rss_ok = r["rss_growth_mib"] <= TARGET_RSS_MIB and not r["killed"]
        by_ok = r["bystander_p99_ms"] <= TARGET_P99_MS
        api_ok = r["api_p99_ms"] <= TARGET_P99_MS
        lines.append(
            f"| {r['label']} | {r['rss_peak_mib']:,.0f} MiB (+{r['rss_growth_mib']:,.0f}) "
            f"{verdict(rss_ok)} | {r['bystander_p50_ms']:,.0f} / {r['bystander_p99_ms']:,.0f} ms "
            f"{verdict(by_ok)} | {r['api_p50_ms']:,.0f} / {r['api_p99_ms']:,.0f} ms "
            f"{verdict(api_ok)} | {r.get('load_average', float('nan')):.1f} | {r['saw']} |"
        )
    return "\n".join(lines)


def raise_open_files() -> None:
    """1,000 WebSockets need more than the usual 1,024 descriptors (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))


async def main_async(args) -> list[dict]:
    selected = [BY_KEY[k] for k in args.only] if args.only else ABUSES
    workdir = Path(tempfile.mkdtemp(prefix="kcr-abuse-"))
    results = []
    started = time.monotonic()
    for abuse in selected:
        progress(f"{abuse.label} ({abuse.seconds:.0f} s budget)")
        try:
            result = await asyncio.wait_for(run_abuse(abuse, workdir, args.allow_unsandboxed), 240)
        except (BenchError, RuntimeError, TimeoutError) as e:
            result = {
                "key": abuse.key,
                "label": abuse.label,
                "rss_base_mib": float("nan"),
                "rss_peak_mib": float("nan"),
                "rss_growth_mib": float("inf"),
                "bystander_p50_ms": float("inf"),
                "bystander_p99_ms": float("inf"),
                "bystander_n": 0,
                "api_p50_ms": float("inf"),
                "api_p99_ms": float("inf"),
                "api_n": 0,
                "killed": False,
                "saw": f"(bench could not run it: {str(e).splitlines()[0][:200]})",
            }
        results.append(result)
        progress(
            f"{abuse.label}: +{result['rss_growth_mib']:.0f} MiB, bystander p99 "
            f"{result['bystander_p99_ms']:.0f} ms, /api p99 {result['api_p99_ms']:.0f} ms; "
            f"{result['saw']}"
        )
    progress(f"done in {time.monotonic() - started:.0f} s")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=lambda s: s.split(","), help=",".join(BY_KEY))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--allow-unsandboxed", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in args.only or ():
        if key not in BY_KEY:
            parser.error(f"unknown abuse {key!r}; known: {', '.join(BY_KEY)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    raise_open_files()
    if args.worker:
        return worker_main(args.worker, args.url, args.kernel, args.seconds)
    info = machine_info(("kcr-kernels", "jupyter_server", "tornado"))
    print(machine_line(info))
    print("command: hatch run bench:abuse " + " ".join(argv or sys.argv[1:]))
    results = asyncio.run(main_async(args))
    print()
    print(
        f"Targets per abuse: gateway RSS growth <= {TARGET_RSS_MIB} MiB, bystander 1+1 p99 <= "
        f"{TARGET_P99_MS} ms, GET /api p99 <= {TARGET_P99_MS} ms (probes every {PROBE_EVERY} s; "
        f"no answer in {PROBE_TIMEOUT:.0f} s counts as {PROBE_TIMEOUT:.0f} s)."
    )
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

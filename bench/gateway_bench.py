"""kcr-gateway against Jupyter Kernel Gateway, with direct ZMQ to ipykernel as the floor.

Usage::

    hatch run bench:gateway                      # full run (a few minutes)
    hatch run bench:gateway --quick              # smoke run with small counts
    hatch run bench:gateway --json results.json  # also save every figure
    hatch run bench:gateway --systems kcr,zmq    # only some of the three

One run starts kcr-gateway (``python -m kcr_gateway.app``, local sandboxed
pods, a warm pool) and Jupyter Kernel Gateway (``python -m kernel_gateway``,
the ``python3`` ipykernel kernelspec) one after the other as subprocesses on
free 127.0.0.1 ports, drives both with the same tornado WebSocket client
(legacy JSON frames, TCP_NODELAY on the client socket) and then measures
jupyter_client talking straight to a local ipykernel over ZMQ. It prints a
side-by-side table; ``--json FILE`` saves the raw figures.

What is measured (a kernel is *ready* when its ``kernel_info_reply`` has
arrived and iopub has reported ``idle`` for that request):

* start: ``POST /api/kernels`` -> WebSocket open -> ready, sequential starts
  (kcr: the warm pool is refilled before each start);
* ``1+1``: ``execute_request`` sent -> ``execute_reply`` + iopub idle, one
  kernel, sequential; once more with the client's default socket (Nagle on);
* printing 1,000 lines (``for i in range(1000): print(i)``), same timing;
* 10 kernels started at once: time until the last one is ready;
* executes/s: those 10 kernels each running 50 ``1+1`` cells back to back;
* memory, in a fresh gateway process: the gateway's own RSS before and after
  opening 50 idle kernels (each with its WebSocket open), and the total RSS
  of what it started (pods or kernel processes).

Everything started is stopped at the end, also on Ctrl-C or failure.
kcr-gateway needs bubblewrap like the gateway does; ``--allow-unsandboxed``
is passed through to it when bubblewrap is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CpuMeter,
    ManagedProcess,
    descendant_pids,
    descendants_rss_bytes,
    free_port,
    kcr_gateway_argv,
    kcr_gateway_env,
    machine_info,
    machine_line,
    rss_bytes,
    summarize_ms,
)

MB = 1024 * 1024
ONE_PLUS_ONE = "1+1"
PRINT_1000 = "for i in range(1000):\n    print(i)"
DISTRIBUTIONS = (
    "kcr-kernels",
    "jupyter-kernel-gateway",
    "jupyter_server",
    "jupyter_client",
    "ipykernel",
    "tornado",
    "pyzmq",
)
SYSTEMS = ("kcr", "kg", "zmq")
LABELS = {"kcr": "kcr-gateway", "kg": "Kernel Gateway", "zmq": "direct ZMQ"}


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


@dataclass
class Counts:
    starts: int = 20
    rtt: int = 200
    prints: int = 20
    concurrent: int = 10
    cells: int = 50
    idle_kernels: int = 50
    warmup: int = 5

    @classmethod
    def quick(cls) -> Counts:
        return cls(starts=5, rtt=30, prints=3, concurrent=10, cells=10, idle_kernels=5, warmup=2)


# -- one WebSocket client for both gateways -------------------------------------------


@dataclass
class _Pending:
    future: asyncio.Future
    reply: dict | None = None
    idle: bool = False
    outputs: int = 0


def new_message(msg_type: str, content: dict, session: str) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "bench",
            "session": session,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


class WSKernelClient:
    """A Jupyter client over a kernel's ``/channels`` WebSocket (legacy JSON frames).

    :meth:`request` sends one shell request and returns once both its reply
    and the iopub ``idle`` for it have arrived, with the number of output
    messages seen for it. A closed socket fails every pending request with
    :class:`BenchError`.
    """

    def __init__(self, conn, url: str) -> None:
        self.conn = conn
        self.url = url
        self.session = uuid.uuid4().hex
        self._pending: dict[str, _Pending] = {}
        self._reader = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(
        cls, url: str, *, nodelay: bool = True, timeout: float = 60
    ) -> WSKernelClient:
        try:
            conn = await websocket_connect(
                HTTPRequest(url, connect_timeout=timeout, request_timeout=timeout),
                max_message_size=64 * MB,
            )
        except (HTTPClientError, OSError) as e:
            raise BenchError(f"WebSocket {url} did not open: {e}") from e
        if nodelay:
            conn.protocol.set_nodelay(True)
        return cls(conn, url)

    async def _read_loop(self) -> None:
        while True:
            frame = await self.conn.read_message()
            if frame is None:
                break
            if isinstance(frame, bytes):
                continue  # binary frames carry buffers; this benchmark sends none
            msg = json.loads(frame)
            parent = (msg.get("parent_header") or {}).get("msg_id")
            pending = self._pending.get(parent)
            if pending is None:
                continue
            msg_type = msg.get("msg_type") or msg["header"]["msg_type"]
            channel = msg.get("channel")
            if channel == "shell" and msg_type.endswith("_reply"):
                pending.reply = msg
            elif channel == "iopub" and msg_type == "status":
                pending.idle = pending.idle or msg["content"].get("execution_state") == "idle"
            elif channel == "iopub" and msg_type not in ("execute_input", "status"):
                pending.outputs += 1
            if pending.reply is not None and pending.idle and not pending.future.done():
                pending.future.set_result(pending)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(BenchError(f"WebSocket {self.url} closed"))

    async def request(self, msg_type: str, content: dict, timeout: float = 60) -> _Pending:
        msg = new_message(msg_type, content, self.session)
        msg_id = msg["header"]["msg_id"]
        pending = self._pending[msg_id] = _Pending(asyncio.get_running_loop().create_future())
        try:
            await self.conn.write_message(json.dumps(msg))
            return await asyncio.wait_for(pending.future, timeout)
        except TimeoutError:
            got = "reply" if pending.reply else "no reply"
            raise BenchError(
                f"{msg_type} on {self.url}: {got}, idle={pending.idle} after {timeout:.0f}s"
            ) from None
        finally:
            self._pending.pop(msg_id, None)

    async def execute(self, code: str, timeout: float = 60) -> _Pending:
        pending = await self.request(
            "execute_request",
            {"code": code, "silent": False, "store_history": True, "allow_stdin": False},
            timeout,
        )
        status = pending.reply["content"].get("status")
        if status != "ok":
            raise BenchError(f"{code!r} failed on {self.url}: {pending.reply['content']}")
        return pending

    def close(self) -> None:
        self.conn.close()
        self._reader.cancel()


# -- the gateways under test ------------------------------------------------------------


@dataclass
class Gateway:
    """A gateway subprocess and the REST calls the benchmark makes on it."""

    key: str
    kernel_name: str
    process: ManagedProcess
    port: int
    pooled: bool = False
    kernels: set = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def call(self, method: str, path: str, body=None, timeout: float = 120) -> dict | None:
        request = HTTPRequest(
            self.url + path,
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json"},
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            detail = e.response.body.decode(errors="replace")[:300] if e.response else ""
            raise BenchError(f"{LABELS[self.key]}: {method} {path} -> {e.code} {detail}") from e
        return json.loads(response.body) if response.body else None

    async def wait_listening(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.process.check_alive()
            try:
                await AsyncHTTPClient().fetch(self.url + "/api", request_timeout=2)
                return
            except (HTTPClientError, OSError):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{LABELS[self.key]} did not answer on {self.url} in {timeout:.0f}s; "
                        f"log:\n{self.process.log_tail()}"
                    ) from None
                await asyncio.sleep(0.1)

    async def wait_pool_full(self, timeout: float = 180) -> None:
        """kcr only: wait until every pool holds its target of warm pods."""
        if not self.pooled:
            return
        deadline = time.monotonic() + timeout
        while True:
            pools = await self.call("GET", "/api/kcr/pools")
            if all(p["warm"] >= p["target"] for p in pools.values()):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"kcr pool not refilled in {timeout:.0f}s: {pools}")
            self.process.check_alive()
            await asyncio.sleep(0.05)

    async def start_ready(self, *, nodelay: bool = True) -> tuple[str, WSKernelClient, float]:
        """Start a kernel and wait until it is ready; returns (id, client, seconds)."""
        t0 = time.perf_counter()
        model = await self.call("POST", "/api/kernels", {"name": self.kernel_name})
        kernel_id = model["id"]
        self.kernels.add(kernel_id)
        ws_url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels"
        client = await WSKernelClient.connect(ws_url, nodelay=nodelay)
        await client.request("kernel_info_request", {})
        return kernel_id, client, time.perf_counter() - t0

    async def delete(self, kernel_id: str) -> None:
        await self.call("DELETE", f"/api/kernels/{kernel_id}")
        self.kernels.discard(kernel_id)

    def remember_descendants(self) -> None:
        self.process.remember_descendants()


def start_kcr(workdir: Path, warm: int, allow_unsandboxed: bool) -> Gateway:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="kcr-data-", dir=workdir))
    argv = kcr_gateway_argv(
        port, data_dir, {"python": {"warm": warm}}, allow_unsandboxed=allow_unsandboxed
    )
    env = kcr_gateway_env()
    log = workdir / f"kcr-gateway-{port}.log"
    process = ManagedProcess("kcr-gateway", argv, log, env=env)
    return Gateway("kcr", "kcr-python", process, port, pooled=True)


# Runs Kernel Gateway with TCP_NODELAY on every socket its HTTP server accepts
# (Kernel Gateway never sets it, so its small WebSocket writes wait on Nagle's
# algorithm). Used only for the extra "server TCP_NODELAY" round-trip figure.
_KG_NODELAY_LAUNCHER = """
import socket, sys
from tornado.tcpserver import TCPServer
_accept = TCPServer._handle_connection
def _handle_connection(self, connection, address):
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _accept(self, connection, address)
TCPServer._handle_connection = _handle_connection
from kernel_gateway import launch_instance
sys.exit(launch_instance())
"""


def start_kg(workdir: Path, *, server_nodelay: bool = False) -> Gateway:
    port = free_port()
    launcher = ["-c", _KG_NODELAY_LAUNCHER] if server_nodelay else ["-m", "kernel_gateway"]
    argv = [
        sys.executable,
        *launcher,
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        "--KernelGatewayApp.list_kernels=True",
        "--KernelGatewayApp.default_kernel_name=python3",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KG_")}
    log = workdir / f"kernel-gateway-{port}.log"
    process = ManagedProcess("jupyter kernelgateway", argv, log, env=env)
    return Gateway("kg", "python3", process, port)


@contextlib.asynccontextmanager
async def running(gateway: Gateway):
    """Wait for the gateway to listen; on exit close kernels and stop the process."""
    try:
        await gateway.wait_listening()
        await gateway.wait_pool_full()
        yield gateway
    finally:
        gateway.remember_descendants()
        for kernel_id in list(gateway.kernels):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gateway.delete(kernel_id), 10)
        await asyncio.to_thread(gateway.process.stop)


# -- phases ----------------------------------------------------------------------------------


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


async def phase_starts(gw: Gateway, n: int) -> dict:
    """``n`` sequential starts after one untimed first start (reported as ``first_ms``)."""
    times = []
    for _ in range(n + 1):
        await gw.wait_pool_full()
        kernel_id, client, seconds = await gw.start_ready()
        times.append(seconds)
        client.close()
        await gw.delete(kernel_id)
    return summarize_ms(times[1:]) | {"first_ms": times[0] * 1e3}


async def timed_executes(client, code: str, n: int) -> tuple[list[float], int]:
    times, outputs = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        done = await client.execute(code)
        times.append(time.perf_counter() - t0)
        outputs = done.outputs
    return times, outputs


async def phase_round_trips(gw: Gateway, counts: Counts, client_nagle: bool = True) -> dict:
    results = {}
    for nodelay in (True, False) if client_nagle else (True,):
        await gw.wait_pool_full()
        kernel_id, client, _ = await gw.start_ready(nodelay=nodelay)
        try:
            await timed_executes(client, ONE_PLUS_ONE, counts.warmup)
            times, _ = await timed_executes(client, ONE_PLUS_ONE, counts.rtt)
            key = "rtt" if nodelay else "rtt_client_nagle"
            results[key] = summarize_ms(times)
            if nodelay:
                times, outputs = await timed_executes(client, PRINT_1000, counts.prints)
                results["print_1000"] = summarize_ms(times) | {"output_messages": outputs}
        finally:
            client.close()
            await gw.delete(kernel_id)
    return results


async def phase_concurrent(gw: Gateway, counts: Counts) -> dict:
    await gw.wait_pool_full()
    await asyncio.sleep(0.5)  # let the refill's last pod settle
    t0 = time.perf_counter()
    started = await asyncio.gather(*(gw.start_ready() for _ in range(counts.concurrent)))
    all_ready = time.perf_counter() - t0
    clients = [client for _, client, _ in started]
    try:
        for client in clients:
            await client.execute(ONE_PLUS_ONE)  # warm each kernel's first cell

        async def cells(client) -> None:
            for _ in range(counts.cells):
                await client.execute(ONE_PLUS_ONE)

        meter = CpuMeter(
            {
                "gateway": [gw.process.pid],
                "kernels": descendant_pids(gw.process.pid),
                "client": [os.getpid()],
            }
        )
        t1 = time.perf_counter()
        with meter:
            await asyncio.gather(*(cells(c) for c in clients))
        elapsed = time.perf_counter() - t1
    finally:
        for client in clients:
            client.close()
        for kernel_id, _, _ in started:
            await gw.delete(kernel_id)
    return {
        "concurrent_starts": {
            "kernels": counts.concurrent,
            "all_ready_ms": all_ready * 1e3,
            "slowest_ms": max(s for _, _, s in started) * 1e3,
        },
        "throughput": {
            "kernels": counts.concurrent,
            "cells_each": counts.cells,
            "executes_per_s": counts.concurrent * counts.cells / elapsed,
            "cpu_ms_per_execute": cpu_per_execute(meter, counts),
        },
    }


def cpu_per_execute(meter: CpuMeter, counts: Counts) -> dict:
    """CPU milliseconds per execute of each process group (the client includes its own
    loop, so its figure is an upper bound of what the WebSocket client costs)."""
    cells = counts.concurrent * counts.cells
    return {name: used * 1e3 / cells for name, used in meter.used.items()}


async def settle(gw: Gateway) -> None:
    await gw.wait_pool_full()
    await asyncio.sleep(2.0)


async def phase_memory(gw: Gateway, n: int) -> dict:
    """In a fresh gateway: RSS before and after ``n`` idle kernels with WebSockets open."""
    kernel_id, client, _ = await gw.start_ready()  # first start loads lazily imported code
    await client.execute(ONE_PLUS_ONE)
    client.close()
    await gw.delete(kernel_id)
    await settle(gw)
    before = rss_bytes(gw.process.pid)
    pods_before, children_before = descendants_rss_bytes(gw.process.pid)
    clients = []
    try:
        for i in range(n):
            _, client, _ = await gw.start_ready()
            clients.append(client)
            if (i + 1) % 10 == 0:
                progress(f"{i + 1}/{n} idle kernels open")
        await settle(gw)
        gw.remember_descendants()
        after = rss_bytes(gw.process.pid)
        procs_after, children_after = descendants_rss_bytes(gw.process.pid)
    finally:
        for client in clients:
            client.close()
    return {
        "idle_kernels": n,
        "gateway_rss_before_mb": before / MB,
        "gateway_rss_after_mb": after / MB,
        "gateway_growth_per_kernel_mb": (after - before) / MB / n,
        "child_processes_before": pods_before,
        "child_processes_after": procs_after,
        "children_rss_before_mb": children_before / MB,
        "children_rss_after_mb": children_after / MB,
        "children_rss_per_kernel_mb": (children_after - children_before) / MB / n,
    }


async def bench_gateway(make, counts: Counts) -> dict:
    results: dict = {}
    async with running(make()) as gw:
        progress(f"{LABELS[gw.key]}: {counts.starts} sequential starts")
        results["starts"] = await phase_starts(gw, counts.starts)
        progress(f"{LABELS[gw.key]}: round trips")
        results |= await phase_round_trips(gw, counts)
        progress(f"{LABELS[gw.key]}: {counts.concurrent} concurrent starts, then executes/s")
        results |= await phase_concurrent(gw, counts)
    if gw.key == "kg":
        async with running(make(server_nodelay=True)) as gw:
            progress("Kernel Gateway with TCP_NODELAY on its server sockets: round trips")
            nodelay = await phase_round_trips(gw, counts, client_nagle=False)
            results["rtt_server_nodelay"] = nodelay["rtt"]
    if counts.idle_kernels:
        async with running(make()) as gw:
            progress(f"{LABELS[gw.key]}: memory with {counts.idle_kernels} idle kernels")
            results["memory"] = await phase_memory(gw, counts.idle_kernels)
    return results


# -- the floor: jupyter_client straight to ipykernel over ZMQ -------------------------------


class ZMQKernel:
    """A local ipykernel and an AsyncKernelClient on its ZMQ sockets."""

    log = None  # where the kernels' stdout/stderr go (None: inherited)

    def __init__(self, km, kc) -> None:
        self.km, self.kc = km, kc

    @classmethod
    async def start_ready(cls) -> tuple[ZMQKernel, float]:
        from jupyter_client.manager import AsyncKernelManager

        t0 = time.perf_counter()
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(stdout=cls.log, stderr=cls.log)
        kernel = cls(km, km.client())
        kernel.kc.start_channels()
        try:
            await kernel.wait_ready()
        except BaseException:
            await kernel.shutdown()
            raise
        return kernel, time.perf_counter() - t0

    async def _wait(
        self, msg_id: str, idle_timeout: float, timeout: float = 60
    ) -> tuple[bool, int]:
        """Wait for the reply to ``msg_id`` and its iopub idle; (idle seen, outputs)."""
        import queue

        kc, outputs, idle = self.kc, 0, False
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = await kc.get_iopub_msg(timeout=idle_timeout)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status":
                    if msg["content"]["execution_state"] == "idle":
                        idle = True
                        break
                elif msg["msg_type"] != "execute_input":
                    outputs += 1
        except queue.Empty:
            pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no reply to {msg_id} from the ZMQ kernel in {timeout:.0f}s")
            reply = await kc.get_shell_msg(timeout=left)
            if reply["parent_header"].get("msg_id") == msg_id:
                return idle, outputs

    async def wait_ready(self) -> None:
        # A SUB socket misses what is published before it has joined, so ask
        # again (as jupyter_server's nudge does) until the idle is seen too.
        for _ in range(200):
            if (await self._wait(self.kc.kernel_info(), idle_timeout=0.5))[0]:
                return
        raise BenchError("the ZMQ kernel never reported idle on iopub")

    async def execute(self, code: str) -> int:
        idle, outputs = await self._wait(self.kc.execute(code), idle_timeout=60)
        if not idle:
            raise BenchError(f"no iopub idle for {code!r} from the ZMQ kernel")
        return outputs

    async def shutdown(self) -> None:
        self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)


async def bench_zmq(counts: Counts, log) -> dict:
    """The floor: jupyter_client and ipykernel in this process's loop, no gateway.

    The kernels' own output goes to ``log`` (a binary file)."""
    ZMQKernel.log = log
    results: dict = {}
    kernels: list[ZMQKernel] = []

    async def timed(kernel: ZMQKernel, code: str, n: int) -> tuple[list[float], int]:
        times, outputs = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            outputs = await kernel.execute(code)
            times.append(time.perf_counter() - t0)
        return times, outputs

    try:
        progress(f"direct ZMQ: {counts.starts} sequential starts")
        times = []
        for _ in range(counts.starts + 1):
            kernel, seconds = await ZMQKernel.start_ready()
            times.append(seconds)
            await kernel.shutdown()
        results["starts"] = summarize_ms(times[1:]) | {"first_ms": times[0] * 1e3}

        progress("direct ZMQ: round trips")
        kernel, _ = await ZMQKernel.start_ready()
        kernels.append(kernel)
        await timed(kernel, ONE_PLUS_ONE, counts.warmup)
        times, _ = await timed(kernel, ONE_PLUS_ONE, counts.rtt)
        results["rtt"] = summarize_ms(times)
        times, outputs = await timed(kernel, PRINT_1000, counts.prints)
        results["print_1000"] = summarize_ms(times) | {"output_messages": outputs}
        await kernel.shutdown()
        kernels.clear()

        progress(f"direct ZMQ: {counts.concurrent} concurrent starts, then executes/s")
        t0 = time.perf_counter()
        started = await asyncio.gather(
            *(ZMQKernel.start_ready() for _ in range(counts.concurrent)), return_exceptions=True
        )
        all_ready = time.perf_counter() - t0
        kernels.extend(k for k, _ in (s for s in started if not isinstance(s, BaseException)))
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} ZMQ kernels did not start: {failed[0]!r}")
        for kernel in kernels:
            await kernel.execute(ONE_PLUS_ONE)
        meter = CpuMeter({"kernels": descendant_pids(os.getpid()), "client": [os.getpid()]})
        t1 = time.perf_counter()
        with meter:
            await asyncio.gather(*(timed(k, ONE_PLUS_ONE, counts.cells) for k in kernels))
        elapsed = time.perf_counter() - t1
        results["concurrent_starts"] = {
            "kernels": counts.concurrent,
            "all_ready_ms": all_ready * 1e3,
            "slowest_ms": max(s for _, s in started) * 1e3,
        }
        results["throughput"] = {
            "kernels": counts.concurrent,
            "cells_each": counts.cells,
            "executes_per_s": counts.concurrent * counts.cells / elapsed,
            "cpu_ms_per_execute": cpu_per_execute(meter, counts),
        }
    finally:
        await asyncio.gather(*(k.shutdown() for k in kernels), return_exceptions=True)
    return results


# -- report -------------------------------------------------------------------------------


def _get(results: dict, *path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return value


def _fmt(value, digits: int = 1) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pair(results: dict, name: str, digits: int = 1) -> str:
    p50, p99 = _get(results, name, "p50_ms"), _get(results, name, "p99_ms")
    if math.isnan(p50):
        return "-"
    return f"{_fmt(p50, digits)} / {_fmt(p99, digits)}"


def _cpu(results: dict) -> str:
    gateway = _get(results, "throughput", "cpu_ms_per_execute", "gateway")
    kernels = _get(results, "throughput", "cpu_ms_per_execute", "kernels")
    if math.isnan(kernels):
        return "-"
    return f"{_fmt(gateway, 2)} / {_fmt(kernels, 2)}"


ROWS = [
    # label, how to render one system's results, target for kcr-gateway
    ("start -> ready, p50 / p99 (ms)", lambda r: _pair(r, "starts"), "<= 20 / <= 50"),
    (
        "  first start after launch, untimed above (ms)",
        lambda r: _fmt(_get(r, "starts", "first_ms"), 0),
        "",
    ),
    ("1+1 round trip, p50 / p99 (ms)", lambda r: _pair(r, "rtt", 2), "<= 3, <= ZMQ"),
    (
        "1+1, client without TCP_NODELAY (ms)",
        lambda r: _pair(r, "rtt_client_nagle", 2),
        "",
    ),
    (
        "1+1, server socket TCP_NODELAY patched in (ms)",
        lambda r: _pair(r, "rtt_server_nodelay", 2),
        "",
    ),
    ("print 1,000 lines, p50 / p99 (ms)", lambda r: _pair(r, "print_1000"), ""),
    (
        "  output messages for those lines",
        lambda r: _fmt(_get(r, "print_1000", "output_messages")),
        "",
    ),
    (
        "10 concurrent starts, all ready (ms)",
        lambda r: _fmt(_get(r, "concurrent_starts", "all_ready_ms"), 0),
        "<= 150",
    ),
    (
        "executes/s, 10 kernels x 50 cells",
        lambda r: _fmt(_get(r, "throughput", "executes_per_s"), 0),
        ">= 620",
    ),
    (
        "  CPU ms per execute: gateway / kernels",
        lambda r: _cpu(r),
        "",
    ),
    (
        "  CPU ms per execute: benchmark client",
        lambda r: _fmt(_get(r, "throughput", "cpu_ms_per_execute", "client"), 2),
        "",
    ),
    (
        "gateway RSS before -> with idle kernels (MB)",
        lambda r: (
            "-"
            if math.isnan(_get(r, "memory", "gateway_rss_before_mb"))
            else f"{_get(r, 'memory', 'gateway_rss_before_mb'):.1f} -> "
            f"{_get(r, 'memory', 'gateway_rss_after_mb'):.1f}"
        ),
        "",
    ),
    (
        "gateway growth per idle kernel (MB)",
        lambda r: _fmt(_get(r, "memory", "gateway_growth_per_kernel_mb"), 2),
        "< 1",
    ),
    (
        "pods / kernel processes, RSS per kernel (MB)",
        lambda r: _fmt(_get(r, "memory", "children_rss_per_kernel_mb"), 1),
        "",
    ),
    (
        "pods / kernel processes, total RSS (MB)",
        lambda r: _fmt(_get(r, "memory", "children_rss_after_mb"), 0),
        "",
    ),
]


def verdicts(results: dict) -> list[str]:
    """One line per target of kcr-gateway: met or missed, with the figure."""
    kcr, zmq = results.get("kcr"), results.get("zmq", {})
    if not kcr:
        return []
    checks = [
        ("start p50 <= 20 ms", _get(kcr, "starts", "p50_ms"), lambda v: v <= 20),
        ("start p99 <= 50 ms", _get(kcr, "starts", "p99_ms"), lambda v: v <= 50),
        ("1+1 p50 <= 3 ms", _get(kcr, "rtt", "p50_ms"), lambda v: v <= 3),
        (
            "10 concurrent starts <= 150 ms",
            _get(kcr, "concurrent_starts", "all_ready_ms"),
            lambda v: v <= 150,
        ),
        ("executes/s >= 620", _get(kcr, "throughput", "executes_per_s"), lambda v: v >= 620),
        (
            "gateway growth < 1 MB per idle kernel",
            _get(kcr, "memory", "gateway_growth_per_kernel_mb"),
            lambda v: v < 1,
        ),
    ]
    floor = _get(zmq, "rtt", "p50_ms")
    if not math.isnan(floor):
        checks.append(
            (
                f"1+1 p50 <= direct ZMQ ({floor:.2f} ms)",
                _get(kcr, "rtt", "p50_ms"),
                lambda v: v <= floor,
            )
        )
    lines = []
    for name, value, ok in checks:
        if isinstance(value, float) and math.isnan(value):
            continue
        lines.append(f"  {'met   ' if ok(value) else 'MISSED'}  {name}: {value:,.2f}")
    return lines


def table(results: dict, systems: list[str]) -> str:
    header = ["", *(LABELS[s] for s in systems), "kcr target"]
    rows = [header]
    for label, render, target in ROWS:
        rows.append([label, *(render(results.get(s, {})) for s in systems), target])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        pairs = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in pairs]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def check_sandbox(allow_unsandboxed: bool, workdir: Path) -> None:
    from kcr_kernels.backends.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox(workdir / "sandbox-check").check()
    except SandboxUnavailable as e:
        if not allow_unsandboxed:
            raise BenchError(
                f"kcr-gateway needs its sandbox: {e}. Pass --allow-unsandboxed to benchmark "
                "it with unsandboxed pods (the figures then do not include bubblewrap)."
            ) from None
        print(f"warning: {e}; pods run unsandboxed", file=sys.stderr)


async def main_async(args, counts: Counts, systems: list[str]) -> dict:
    AsyncHTTPClient.configure(None, max_clients=64)
    info = machine_info(DISTRIBUTIONS)
    print(machine_line(info), flush=True)
    results: dict = {"machine": info, "counts": counts.__dict__, "date": datetime.now(UTC)}
    workdir = Path(tempfile.mkdtemp(prefix="kcr-gateway-bench-"))
    try:
        if "kcr" in systems:
            await asyncio.to_thread(check_sandbox, args.allow_unsandboxed, workdir)
            warm = max(counts.concurrent, 2)
            results["kcr"] = await bench_gateway(
                lambda **_: start_kcr(workdir, warm, args.allow_unsandboxed), counts
            )
        if "kg" in systems:
            results["kg"] = await bench_gateway(lambda **kw: start_kg(workdir, **kw), counts)
        if "zmq" in systems:
            log = await asyncio.to_thread(open, workdir / "zmq-kernels.log", "wb")
            try:
                results["zmq"] = await bench_zmq(counts, log)
            finally:
                log.close()
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="kcr-gateway vs Jupyter Kernel Gateway vs direct ZMQ, side by side."
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of kcr,kg,zmq (default: all)",
    )
    parser.add_argument("--starts", type=int, help="sequential starts (default 20)")
    parser.add_argument("--round-trips", type=int, help="1+1 executes timed (default 200)")
    parser.add_argument("--idle-kernels", type=int, help="idle kernels for memory (0: skip)")
    parser.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="run kcr-gateway's pods without bubblewrap when it is missing",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the gateways' logs")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = Counts.quick() if args.quick else Counts()
    if args.starts is not None:
        counts.starts = args.starts
    if args.round_trips is not None:
        counts.rtt = args.round_trips
    if args.idle_kernels is not None:
        counts.idle_kernels = args.idle_kernels
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        print(f"--systems: choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2

    # SIGTERM takes the same path as Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = asyncio.run(main_async(args, counts, systems))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:  # BenchError, or a server that exited
        print(f"gateway_bench: error: {e}", file=sys.stderr)
        return 1

    print()
    print(table(results, systems))
    lines = verdicts(results)
    if lines:
        print("\nkcr-gateway targets:")
        print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

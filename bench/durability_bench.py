"""Checkpoint and restore of 1/10/100 MB namespaces, and resume-from-hibernation latency.

Usage::

    python bench/durability_bench.py                         # sqlite + a throw-away redis-server
    python bench/durability_bench.py --store sqlite --quick  # smoke run: 1 and 10 MB, 20 resumes
    python bench/durability_bench.py --store-url redis://127.0.0.1:6379/15 --json out.json

A real kcr-gateway runs in this process (local backend, sandboxed pods, a
warm pool of two Python pods), once per kernel store. Through its kernel
WebSocket a kernel is given a namespace of a numpy array of random bytes (so
lz4 cannot shrink it; a 100 MB array of zeros is shown too), then:

* **checkpoint** = runner snapshot (``POST /state/snapshot``: cloudpickle +
  lz4 in the pod, the blob back to the gateway) + store put, each timed, and
  the whole ``KCRCheckpointer.checkpoint`` the gateway runs after a cell;
* **restore** = store get + runner restore (``POST /state/restore``) into a
  fresh pod leased from the pool, as on recovery;
* **resume** = a small kernel is hibernated (``KCRKernelManager.hibernate``),
  the pool is let refill, then ``execute_request`` sent -> ``execute_reply``
  received over the WebSocket (a fresh pod, its files and state restored).

Medians are shown for sizes, p50/p99 for resume; the targets of issue 4 are
printed next to them. Each checkpoint and restore also reports the CPU time
the gateway, the pod and a local redis-server used: its steps run one after
the other, so that is close to the wall time on an idle machine (useful when
the machine is shared); the 1-minute load average is printed too.

Everything started is stopped at the end, also on failure. Nothing is
asserted: this is for reading numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect
from traitlets.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CpuMeter, descendant_pids, machine_info, machine_line, summarize_ms
from state_bench import throwaway_redis

MB = 1_000_000
CHECKPOINT_TARGET_S = 1.0  # 100 MB checkpoint, and 100 MB restore, each under 1 s
RESUME_P50_TARGET_MS = 150.0
DISTRIBUTIONS = ("kcr-kernels", "cloudpickle", "lz4", "numpy", "redis", "tornado")


@dataclass
class SmallKernel:
    """A small namespace for the resume measurement and the cell run after each move."""

    label: str
    code: str
    cell: str
    expected: str


STDLIB_NAMESPACE = """
import json as js
from os.path import join
counter = 41
config = {"name": "kcr", "values": list(range(100))}
def greet(name):
    return f"hello {name}"
class Point:
    def __init__(self, x):
        self.x = x
p = Point(3)
"""
SMALL_KERNELS = [
    SmallKernel(
        "small",
        STDLIB_NAMESPACE,
        "counter + p.x + sum(config['values']) + len(greet(js.dumps(join('a', 'b'))))",
        str(41 + 3 + 4950 + len('hello "a/b"')),
    ),
    SmallKernel(
        "small+numpy",
        STDLIB_NAMESPACE + "import numpy as np\narr = np.arange(100)\n",
        "counter + p.x + int(arr.sum())",
        str(41 + 3 + 4950),
    ),
]


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


@dataclass
class Case:
    """One namespace: a label, its size and the cell that builds it (as ``bench``)."""

    label: str
    size: int
    kind: str  # "random" or "zeros"

    @property
    def code(self) -> str:
        if self.kind == "zeros":
            return f"import numpy as np\nbench = np.zeros({self.size}, dtype=np.uint8)"
        return (
            "import numpy as np\n"
            f"bench = np.random.default_rng(0).integers(0, 256, {self.size}, dtype=np.uint8)"
        )


def cases(quick: bool) -> list[Case]:
    sizes = [1, 10] if quick else [1, 10, 100]
    chosen = [Case(f"{n} MB random", n * MB, "random") for n in sizes]
    if not quick:
        chosen.append(Case("100 MB zeros", 100 * MB, "zeros"))
    return chosen


# -- a minimal Jupyter client on the gateway's kernel WebSocket ------------------------


@dataclass
class _Pending:
    sent: float
    reply: dict | None = None
    reply_at: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class KernelSocket:
    """One kernel's ``/channels`` WebSocket (legacy JSON frames).

    :meth:`execute` sends one ``execute_request`` and returns ``(reply content,
    seconds from sending it to receiving its execute_reply)``, after iopub has
    also said ``idle`` for it. A closed socket or a timeout raises BenchError.
    """

    def __init__(self, conn, url: str) -> None:
        self.conn, self.url = conn, url
        self.session = uuid.uuid4().hex
        self._pending: dict[str, _Pending] = {}
        self._closed = False
        self._reader = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, base: str, kernel_id: str) -> KernelSocket:
        url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        conn = await websocket_connect(HTTPRequest(url, connect_timeout=60, request_timeout=60))
        conn.protocol.stream.set_nodelay(True)
        return cls(conn, url)

    async def _read_loop(self) -> None:
        while (frame := await self.conn.read_message()) is not None:
            if isinstance(frame, bytes):
                continue
            msg = json.loads(frame)
            pending = self._pending.get((msg.get("parent_header") or {}).get("msg_id"))
            if pending is None:
                continue
            msg_type = msg["header"]["msg_type"]
            if msg.get("channel") == "shell" and msg_type == "execute_reply":
                pending.reply, pending.reply_at = msg["content"], time.perf_counter()
            elif msg_type == "status" and msg["content"].get("execution_state") == "idle":
                pending.idle.set()
        self._closed = True
        for pending in self._pending.values():
            pending.idle.set()

    async def execute(self, code: str, timeout: float = 300) -> tuple[dict, float]:
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "bench",
                "session": self.session,
                "date": datetime.now(UTC).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
        }
        pending = self._pending[msg_id] = _Pending(sent=time.perf_counter())
        try:
            await self.conn.write_message(json.dumps(msg))
            await asyncio.wait_for(pending.idle.wait(), timeout)
        except TimeoutError:
            raise BenchError(f"{code[:40]!r}: no reply + idle within {timeout:g} s") from None
        finally:
            self._pending.pop(msg_id, None)
        if self._closed or pending.reply is None:
            raise BenchError(f"{code[:40]!r}: the WebSocket {self.url} closed before the reply")
        if pending.reply.get("status") != "ok":
            raise BenchError(f"{code[:40]!r} failed: {pending.reply}")
        return pending.reply, pending.reply_at - pending.sent

    def close(self) -> None:
        self.conn.close()
        self._reader.cancel()


# -- the gateway under test ---------------------------------------------------------------


async def start_gateway(workdir: Path, store_url: str, allow_unsandboxed: bool):
    """An in-process kcr-gateway on a free loopback port, checkpoints only when we ask."""
    from kcr_gateway.app import KCRGateway

    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(workdir / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 2}}
    config.KCRGateway.kernel_store_url = store_url
    config.KCRGateway.allow_unsandboxed = allow_unsandboxed
    config.KCRGateway.log_level = "WARN"
    # The benchmark triggers every checkpoint itself (none runs in the background).
    config.KCRKernelManager.checkpoint_delay = 24 * 3600.0
    app = KCRGateway(config=config)
    try:
        await app.start_async()
        await app.pool.wait_warm(120)
    except BaseException:
        await app.stop_async()
        raise
    return app


async def new_kernel(base: str) -> str:
    response = await AsyncHTTPClient().fetch(
        base + "/api/kernels", method="POST", body=json.dumps({"name": "kcr-python"})
    )
    return json.loads(response.body)["id"]


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# -- phases -----------------------------------------------------------------------------


async def measure_case(app, socket: KernelSocket, kernel_id: str, case: Case, repeat: int) -> dict:
    """Checkpoint (snapshot + put, and the gateway's whole path) and restore of one namespace."""
    from kcr_kernels.runner_client import RunnerClient

    manager, store = app.kernel_manager, app.kernel_store
    kernel = manager.get_kernel(kernel_id)
    await socket.execute(case.code)
    snapshots, puts, checkpoints, gets, restores = [], [], [], [], []
    checkpoint_cpu, restore_cpu = [], []
    blob_size = 0
    for i in range(repeat):
        progress(f"{case.label}: checkpoint {i + 1}/{repeat}")
        meter = cpu_meter(kernel.pod)
        with meter:
            t0 = time.perf_counter()
            response = await kernel.runner.call("POST", "/state/snapshot", b"", timeout=300)
            t1 = time.perf_counter()
            blob = response.body
            await store.put_state(kernel_id, blob, {"created": time.time(), "names": ["bench"]})
            t2 = time.perf_counter()
        checkpoint_cpu.append(meter.used)
        snapshots.append(t1 - t0)
        puts.append(t2 - t1)
        blob_size = len(blob)
        del blob, response

        kernel.dirty = True  # as after a cell
        t0 = time.perf_counter()
        result = await manager.checkpointer.checkpoint(kernel, quiet=True)
        checkpoints.append(time.perf_counter() - t0)
        if result is None or not result.saved:
            raise BenchError(f"{case.label}: the gateway's checkpoint failed: {result}")

        progress(f"{case.label}: restore {i + 1}/{repeat}")
        pod = await app.pool.acquire("python", f"bench-restore-{uuid.uuid4().hex[:8]}", 120)
        runner = RunnerClient(pod.url, pod.token)
        try:
            await runner.connect()
            await app.pool.wait_warm(120)  # no pod start competes with the timed restore
            meter = cpu_meter(pod)
            with meter:
                t0 = time.perf_counter()
                saved = await store.get_state(kernel_id)
                t1 = time.perf_counter()
                if saved is None:
                    raise BenchError(f"{case.label}: no state in the store after the checkpoint")
                answer = await runner.call_json_body(
                    "POST", "/state/restore", saved[0], timeout=300
                )
                t2 = time.perf_counter()
                del saved
            restore_cpu.append(meter.used)
            if "bench" not in answer.get("restored", []) or answer.get("errors"):
                raise BenchError(f"{case.label}: restore did not bring back 'bench': {answer}")
            gets.append(t1 - t0)
            restores.append(t2 - t1)
        finally:
            runner.close()
            await app.pool.release(pod)
        await app.pool.wait_warm(120)
    med = statistics.median
    return {
        "case": case.label,
        "namespace_bytes": case.size,
        "blob_bytes": blob_size,
        "snapshot_s": med(snapshots),
        "put_s": med(puts),
        "checkpoint_s": med(s + p for s, p in zip(snapshots, puts, strict=True)),
        "gateway_checkpoint_s": med(checkpoints),
        "get_s": med(gets),
        "runner_restore_s": med(restores),
        "restore_s": med(g + r for g, r in zip(gets, restores, strict=True)),
        "checkpoint_cpu_s": median_cpu(checkpoint_cpu),
        "restore_cpu_s": median_cpu(restore_cpu),
        "repeat": repeat,
    }


def cpu_meter(pod) -> CpuMeter:
    """CPU time of the gateway (this process), the pod (runner + worker) and a local store.

    The steps of a checkpoint or restore run one after the other, so their summed CPU
    time is roughly what the wall time would be on an otherwise idle machine.
    """
    pod_pid = pod.meta["process"].pid
    stores = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # pods come and go meanwhile
            if child.name() == "redis-server":
                stores.append(child.pid)
    return CpuMeter(
        {"gateway": [os.getpid()], "pod": [pod_pid, *descendant_pids(pod_pid)], "store": stores}
    )


def median_cpu(samples: list[dict]) -> dict:
    """Per-group median CPU seconds, plus ``total`` (median of the per-run sums)."""
    groups = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    groups["total"] = statistics.median(sum(s.values()) for s in samples)
    return groups


async def measure_resume(app, base: str, small: SmallKernel, rounds: int) -> dict:
    """Hibernate a small kernel, refill the pool, then time the next execute's reply."""
    kernel_id = await new_kernel(base)
    socket = await KernelSocket.connect(base, kernel_id)
    manager = app.kernel_manager
    try:
        await socket.execute(small.code)
        attached = []
        for _ in range(rounds):
            _, seconds = await socket.execute(small.cell)
            attached.append(seconds)
        hibernations, resumes = [], []
        for i in range(rounds):
            if i % 10 == 0:
                progress(f"resume {small.label} {i + 1}/{rounds}")
            kernel = manager.get_kernel(kernel_id)
            t0 = time.perf_counter()
            if not await manager.hibernate(kernel, "bench"):
                raise BenchError("hibernation failed: the small kernel's state was not saved")
            hibernations.append(time.perf_counter() - t0)
            if kernel.pod is not None:
                raise BenchError("the kernel still has a pod after hibernate()")
            await app.pool.wait_warm(120)
            _, seconds = await socket.execute(small.cell)
            resumes.append(seconds)
        # The namespace really came back through every move (a failed assert raises here).
        await socket.execute(f"assert str({small.cell}) == {small.expected!r}")
        state = await app.kernel_store.get_state(kernel_id)
        return {
            "namespace": small.label,
            "rounds": rounds,
            "blob_bytes": len(state[0]) if state else 0,
            "resume": summarize_ms(resumes),
            "hibernate": summarize_ms(hibernations),
            "attached_execute": summarize_ms(attached),
        }
    finally:
        socket.close()
        with contextlib.suppress(Exception):
            await AsyncHTTPClient().fetch(base + f"/api/kernels/{kernel_id}", method="DELETE")


async def measure_fresh_import(app, module: str, rounds: int) -> dict:
    """``import MODULE`` as the first cell of a fresh warm pod: what a restore pays for it."""
    from kcr_kernels.runner_client import RunnerClient

    times = []
    for _ in range(rounds):
        pod = await app.pool.acquire("python", f"bench-import-{uuid.uuid4().hex[:8]}", 120)
        runner = RunnerClient(pod.url, pod.token)
        try:
            await runner.connect()
            await app.pool.wait_warm(120)
            t0 = time.perf_counter()
            reply = await runner.request("execute", {"code": f"import {module}", "silent": True})
            times.append(time.perf_counter() - t0)
            if reply["content"].get("status") != "ok":
                raise BenchError(f"import {module} failed in a fresh pod: {reply['content']}")
        finally:
            runner.close()
            await app.pool.release(pod)
    await app.pool.wait_warm(120)
    return summarize_ms(times)


async def bench_store(label: str, url: str, args, workdir: Path) -> dict:
    print(f"== {label}: {url}", file=sys.stderr, flush=True)
    app = await start_gateway(workdir / label, url, args.allow_unsandboxed)
    base = f"http://127.0.0.1:{app.port}"
    try:
        kernel_id = await new_kernel(base)
        socket = await KernelSocket.connect(base, kernel_id)
        try:
            sizes = [
                await measure_case(app, socket, kernel_id, case, args.repeat)
                for case in cases(args.quick)
            ]
        finally:
            socket.close()
            with contextlib.suppress(Exception):
                await AsyncHTTPClient().fetch(base + f"/api/kernels/{kernel_id}", method="DELETE")
        numpy_import = await measure_fresh_import(app, "numpy", 3 if args.quick else 5)
        resume = [await measure_resume(app, base, small, args.rounds) for small in SMALL_KERNELS]
    finally:
        await app.stop_async()
    return {
        "store": label,
        "url": url,
        "sizes": sizes,
        "resume": resume,
        "fresh_pod_import_numpy": numpy_import,
    }


# -- report -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(results: list[dict]) -> str:
    lines = [
        "Checkpoint = runner snapshot + store put; restore = store get + runner restore "
        "into a fresh pod (median ms); CPU = CPU time of gateway + pod + local redis-server",
        f"{'store':7} {'namespace':14} {'blob MB':>8} {'snapshot':>8} {'put':>8} "
        f"{'ckpt':>8} {'gw ckpt':>8} {'get':>8} {'restore':>8} {'total':>8} "
        f"{'ckpt CPU':>8} {'rest CPU':>8}  target",
    ]
    for store in results:
        for row in store["sizes"]:
            target = ""
            if row["namespace_bytes"] >= 100 * MB and row["case"].endswith("random"):
                ok_c = row["checkpoint_s"] < CHECKPOINT_TARGET_S
                ok_r = row["restore_s"] < CHECKPOINT_TARGET_S
                target = f"< 1000 ms each: checkpoint {_verdict(ok_c)}, restore {_verdict(ok_r)}"
            lines.append(
                f"{store['store']:7} {row['case']:14} {row['blob_bytes'] / MB:8.1f} "
                f"{_ms(row['snapshot_s'])} {_ms(row['put_s'])} {_ms(row['checkpoint_s'])} "
                f"{_ms(row['gateway_checkpoint_s'])} {_ms(row['get_s'])} "
                f"{_ms(row['runner_restore_s'])} {_ms(row['restore_s'])} "
                f"{_ms(row['checkpoint_cpu_s']['total'])} {_ms(row['restore_cpu_s']['total'])}"
                f"  {target}"
            )
    lines.append("")
    lines.append("Resume from hibernation: execute_request -> execute_reply on a fresh pod (ms)")
    lines.append(
        f"{'store':7} {'namespace':12} {'rounds':>6} {'blob KB':>8} {'p50':>8} {'p99':>8} "
        f"{'max':>8}  {'hibernate p50':>13}  {'attached p50':>12}  target"
    )
    for store in results:
        for r in store["resume"]:
            target = ""
            if r["namespace"] == "small":
                ok = r["resume"]["p50_ms"] < RESUME_P50_TARGET_MS
                target = f"p50 < {RESUME_P50_TARGET_MS:.0f} ms: {_verdict(ok)}"
            lines.append(
                f"{store['store']:7} {r['namespace']:12} {r['rounds']:6d} "
                f"{r['blob_bytes'] / 1e3:8.1f} {r['resume']['p50_ms']:8.1f} "
                f"{r['resume']['p99_ms']:8.1f} {r['resume']['max_ms']:8.1f}  "
                f"{r['hibernate']['p50_ms']:13.1f}  {r['attached_execute']['p50_ms']:12.1f}  "
                f"{target}"
            )
    lines.append("")
    for store in results:
        imp = store["fresh_pod_import_numpy"]
        lines.append(
            f"{store['store']}: 'import numpy' as the first cell of a fresh pod: "
            f"p50 {imp['p50_ms']:.1f} ms (n={imp['n']}); every restore of a namespace "
            "that uses numpy pays it"
        )
    return "\n".join(lines)


def stores_to_run(args, stack: contextlib.ExitStack, workdir: Path) -> list[tuple[str, str]]:
    if args.store_url:
        return [(url.split(":", 1)[0], url) for url in args.store_url]
    chosen = []
    if args.store in ("sqlite", "all"):
        chosen.append(("sqlite", f"sqlite:///{workdir / 'state' / 'kcr.db'}"))
    if args.store in ("redis", "all"):
        if shutil.which("redis-server"):
            chosen.append(("redis", stack.enter_context(throwaway_redis())))
        elif args.store == "redis":
            raise SystemExit("redis-server not found: install it or pass --store-url redis://...")
        else:
            print("redis-server not found: Redis is skipped", file=sys.stderr)
    return chosen


async def main_async(args) -> dict:
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kcr-durbench-")))
        results = []
        for label, url in stores_to_run(args, stack, workdir):
            results.append(await bench_store(label, url, args, workdir))
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(DISTRIBUTIONS),
        "args": {"quick": args.quick, "repeat": args.repeat, "rounds": args.rounds},
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "targets": {
            "checkpoint_100MB_s": CHECKPOINT_TARGET_S,
            "restore_100MB_s": CHECKPOINT_TARGET_S,
            "resume_p50_ms": RESUME_P50_TARGET_MS,
        },
        "stores": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store-url",
        action="append",
        help="benchmark this kernel store (redis://... or sqlite:///...); repeatable",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "redis", "all"),
        default="all",
        help="without --store-url: a temporary sqlite file and/or a throw-away redis-server",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 and 10 MB only, 1 repeat, 20 resumes"
    )
    parser.add_argument("--repeat", type=int, help="runs per namespace size (median shown; 3)")
    parser.add_argument("--rounds", type=int, help="hibernate/resume rounds (50; at least 20)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="run pods without bubblewrap when it is missing (passed to the gateway)",
    )
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.rounds = max(args.rounds or (20 if args.quick else 50), 20)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(main_async(args))
    print(machine_line(results["machine"]))
    before, after = results["load_average_1min"]
    print(f"date: {results['date']}; 1-minute load average {before:.1f} before, {after:.1f} after")
    print(table(results["stores"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

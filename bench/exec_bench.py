"""Benchmark of the code-interpreter API: ``POST /v1/exec`` round trips.

Starts ``kcr-gateway`` as a subprocess (sandboxed local pods, a warm Python pool, one
API key) and times, from a client process that keeps its HTTP connection open:

* **new session**: ``print(1)`` without ``session_id`` (a new session on a warm pod),
  ``--new`` times; before each sample the pool is warm again, and each session is
  deleted afterwards (``DELETE /api/kernels/{id}``) so pods do not pile up;
* **existing session**: ``print(1)`` in one session, ``--calls`` times;
* **baseline**: the same ``print(1)`` through the Jupyter WebSocket of the same gateway
  (what the machine gives any client at that moment);
* **throughput**: 10 sessions (``--sessions``) calling ``print(1)`` back to back from 10
  client threads for ``--seconds``; calls/s over all of them.

Targets (issue 15): new-session p50 ≤ 30 ms on a warm pool, existing-session p50 ≤ 5 ms.

    python bench/exec_bench.py [--new 30] [--calls 300] [--sessions 10] [--seconds 10]

Prints a table and (``--json FILE``) every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuMeter,
    ManagedProcess,
    descendant_pids,
    free_port,
    machine_info,
    machine_line,
    summarize_ms,
)
from kcr_gateway.code_api.ids import kernel_id_of

KEY = "bench-key-0123456789abcdef"
CODE = "print(1)"


class Client:
    """One keep-alive HTTP connection to the gateway."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"x-api-key": KEY, "Content-Type": "application/json"}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})

    def exec(self, session_id: str | None = None) -> tuple[float, dict]:
        body = {"lang": "py", "code": CODE}
        if session_id:
            body["session_id"] = session_id
        started = time.perf_counter()
        status, answer = self.request("POST", "/v1/exec", body)
        elapsed = time.perf_counter() - started
        if status != 200 or answer.get("stdout") != "1\n":
            raise RuntimeError(f"exec failed: {status} {answer}")
        return elapsed, answer


def wait_ready(port: int, gateway: ManagedProcess, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gateway.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not become ready")


def wait_warm(client: Client, target: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, pools = client.request("GET", "/api/kcr/pools")
        if pools.get("python", {}).get("warm", 0) >= target:
            return
        time.sleep(0.05)
    raise RuntimeError("the pool did not refill")


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="kcr-exec-bench-"))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "kcr_gateway.app",
        f"--port={port}",
        f"--data-dir={tmp / 'data'}",
        f"--KCRGateway.pools={json.dumps({'python': {'warm': args.warm}})}",
        f"--KCRGateway.code_api_keys={json.dumps([KEY])}",
        "--KCRCodeAPI.rate_limit=0",
        "--KCRCodeAPI.max_sessions=0",
        "--log-level=WARN",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCR_")}
    with ManagedProcess("kcr-gateway", argv, tmp / "gateway.log", env=env) as gateway:
        wait_ready(port, gateway)
        client = Client(port)
        client.exec()  # warm the gateway's code paths once
        new, existing = [], []
        for _ in range(args.new):
            wait_warm(client, args.warm)
            elapsed, answer = client.exec()
            new.append(elapsed)
            client.request("DELETE", f"/api/kernels/{kernel_id_of(answer['session_id'])}")
        wait_warm(client, args.warm)
        _, answer = client.exec()
        session = answer["session_id"]
        for _ in range(20):
            client.exec(session)
        groups = {"gateway": [gateway.pid], "pods": descendant_pids(gateway.pid)}
        with CpuMeter(groups) as meter:
            for _ in range(args.calls):
                existing.append(client.exec(session)[0])
        cpu_ms = {k: round(v * 1e3 / args.calls, 2) for k, v in meter.used.items()}
        baseline = asyncio.run(websocket_baseline(port, args.calls))
        throughput = concurrent(port, args.sessions, args.seconds, args.warm)
        gateway.remember_descendants()
    return {
        "new_session": summarize_ms(new),
        "existing_session": summarize_ms(existing),
        "existing_session_cpu_ms_per_call": cpu_ms,
        "websocket_baseline": summarize_ms(baseline),
        "concurrent": throughput,
        "machine": machine_info(["tornado", "jupyter_server", "ipykernel"]),
    }


async def websocket_baseline(port: int, calls: int) -> list[float]:
    """The same ``print(1)`` on a kernel through the Jupyter WebSocket of the same gateway:
    what the machine gives any client now (the code API's own cost is the difference)."""
    from tornado.httpclient import AsyncHTTPClient
    from tornado.websocket import websocket_connect

    base = f"http://127.0.0.1:{port}"
    r = await AsyncHTTPClient().fetch(base + "/api/kernels", method="POST", body="{}")
    kernel_id = json.loads(r.body)["id"]
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels")
    times = []
    try:
        for i in range(calls + 20):
            msg_id = uuid.uuid4().hex
            header = {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": "bench",
                "username": "bench",
                "version": "5.3",
                "date": "",
            }
            content = {
                "code": CODE,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            }
            msg = {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": "shell",
            }
            started = time.perf_counter()
            await ws.write_message(json.dumps(msg))
            replied = idle = False
            while not (replied and idle):
                reply = json.loads(await ws.read_message())
                if reply["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = reply["header"]["msg_type"]
                replied = replied or kind == "execute_reply"
                idle = idle or (kind == "status" and reply["content"]["execution_state"] == "idle")
            if i >= 20:
                times.append(time.perf_counter() - started)
    finally:
        ws.close()
        await AsyncHTTPClient().fetch(base + f"/api/kernels/{kernel_id}", method="DELETE")
    return times


def concurrent(port: int, sessions: int, seconds: float, warm: int) -> dict:
    clients = [Client(port) for _ in range(sessions)]
    ids = []
    for client in clients:
        wait_warm(client, min(warm, 2))
        ids.append(client.exec()[1]["session_id"])
    counts = [0] * sessions
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                clients[i].exec(ids[i])
                counts[i] += 1
        except Exception as e:  # reported, not hidden
            errors.append(str(e))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "sessions": sessions,
        "seconds": round(elapsed, 2),
        "calls": sum(counts),
        "calls_per_s": round(sum(counts) / elapsed, 1),
        "errors": errors[:3],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=30, help="new-session calls timed")
    parser.add_argument("--calls", type=int, default=300, help="existing-session calls timed")
    parser.add_argument("--sessions", type=int, default=10, help="sessions for calls/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the calls/s run")
    parser.add_argument("--warm", type=int, default=4, help="warm Python pods kept")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    result = run(args)
    print(machine_line(result["machine"]))
    print(f"{'POST /v1/exec print(1)':32} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'target':>8}")
    for name, key, target in (
        ("new session (warm pool)", "new_session", 30),
        ("existing session", "existing_session", 5),
    ):
        s = result[key]
        print(f"{name:32} {s['n']:>5} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {target:>7} ms")
    cpu = result["existing_session_cpu_ms_per_call"]
    print(f"CPU per existing-session call: gateway {cpu['gateway']} ms, pods {cpu['pods']} ms")
    s = result["websocket_baseline"]
    name = "baseline: WebSocket execute"
    print(f"{name:32} {s['n']:>5} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {'-':>10}")
    c = result["concurrent"]
    errors = f"; errors: {c['errors']}" if c["errors"] else ""
    print(
        f"{c['sessions']} sessions at once: {c['calls_per_s']} calls/s "
        f"({c['calls']} calls in {c['seconds']} s){errors}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

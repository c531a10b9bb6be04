"""Runner benchmark: ``python bench/runner_bench.py [--executes N] [--lines N]``.

Starts a real ``kcr-runner`` on 127.0.0.1, then measures over its /channel WebSocket:

* the round trip of ``1+1`` (send execute -> reply received), p50 / p99 / mean over N executes,
  and the CPU time per execute of the runner and of its worker process(es) (psutil; less
  sensitive to other load on the machine than the wall times);
* the throughput of a cell printing 100,000 lines (wall time until the reply, lines/s, MB/s,
  and how many ``stream`` frames carried them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import websockets


def start_runner(workspace: str, token: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "KCR_RUNNER_TOKEN": token}
    cmd = [sys.executable, "-m", "kcr_runner", "--port", "0", "--workspace", workspace]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline().decode()
    if not line.startswith("KCR_RUNNER_READY "):
        raise SystemExit(f"runner did not start: {line!r}")
    return proc, json.loads(line.split(" ", 1)[1])["port"]


async def execute(ws, code: str) -> list[dict]:
    request_id = uuid.uuid4().hex
    await ws.send(json.dumps({"id": request_id, "op": "execute", "content": {"code": code}}))
    frames = []
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if frame["id"] == request_id and frame["event"] == "reply":
            return frames


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def run(port: int, token: str, executes: int, lines: int, pid: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    url = f"ws://127.0.0.1:{port}/channel"
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        for _ in range(20):  # warm up
            await execute(ws, "1+1")
        runner = psutil.Process(pid)
        workers = runner.children(recursive=True)
        cpu_before = [cpu_seconds(p) for p in (runner, *workers)]
        samples = []
        for _ in range(executes):
            start = time.perf_counter()
            await execute(ws, "1+1")
            samples.append((time.perf_counter() - start) * 1000)
        cpu_after = [cpu_seconds(p) for p in (runner, *workers)]
        cpu_ms = [(a - b) * 1000 / executes for a, b in zip(cpu_after, cpu_before, strict=True)]
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]

        start = time.perf_counter()
        frames = await execute(ws, f"for i in range({lines}):\n    print(i)")
        elapsed = time.perf_counter() - start
        streams = [f for f in frames if f["event"] == "stream"]
        text = "".join(f["content"]["text"] for f in streams)
        assert text.count("\n") == lines, "lines were lost"

    print(f"{'metric':<36}{'value':>14}")
    print("-" * 50)
    print(f"{'1+1 round trip p50 (ms)':<36}{p50:>14.2f}")
    print(f"{'1+1 round trip p99 (ms)':<36}{p99:>14.2f}")
    print(f"{'1+1 round trip mean (ms)':<36}{statistics.fmean(samples):>14.2f}")
    print(f"{'executes measured':<36}{executes:>14}")
    print(f"{'1+1 CPU ms per execute: runner':<36}{cpu_ms[0]:>14.2f}")
    print(f"{'1+1 CPU ms per execute: worker':<36}{sum(cpu_ms[1:]):>14.2f}")
    print(f"{'worker processes':<36}{len(workers):>14}")
    print(f"{f'print {lines} lines: wall (s)':<36}{elapsed:>14.3f}")
    print(f"{'print lines: lines/s':<36}{lines / elapsed:>14.0f}")
    print(f"{'print lines: MB/s':<36}{len(text) / elapsed / 1e6:>14.2f}")
    print(f"{'print lines: stream frames':<36}{len(streams):>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executes", type=int, default=500)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="kcr-bench-") as workspace:
        proc, port = start_runner(workspace, token)
        try:
            asyncio.run(run(port, token, args.executes, args.lines, proc.pid))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()

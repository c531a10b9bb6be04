"""Pod start and pool acquire latency with the local backend (real runner processes).

Measures, for sandboxed and unsandboxed pods: the time from ``backend.create``
to ``wait_ready`` returning (runner listening, worker up, ``/healthz`` ok), and
the latency of ``PodPool.acquire`` from a warm pool.

    python bench/pool_bench.py [--pods 5] [--acquires 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from kcr_kernels.backends.local import LocalBackend
from kcr_kernels.pool import PodPool, PoolConfig


def summary(values: list[float]) -> str:
    us = sorted(v * 1e6 for v in values)
    med, lo, hi = statistics.median(us), us[0], us[-1]
    return f"median {med:9.0f} us  min {lo:9.0f}  max {hi:9.0f}  (n={len(us)})"


async def start_times(root: Path, sandbox: bool, n: int) -> list[float]:
    backend = LocalBackend(root, sandbox=sandbox)
    await backend.start()
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            pod = await backend.wait_ready(await backend.create("python"), 60)
            times.append(time.perf_counter() - t0)
            await backend.delete(pod)
    finally:
        await backend.close()
    return times


async def acquire_times(root: Path, sandbox: bool, n: int) -> list[float]:
    backend = LocalBackend(root, sandbox=sandbox)
    pool = PodPool(backend, [PoolConfig("python", warm=2)], health_interval=0)
    await pool.start()
    times = []
    try:
        for i in range(n):
            await pool.wait_warm(120)
            t0 = time.perf_counter()
            pod = await pool.acquire("python", f"bench-{i}")
            times.append(time.perf_counter() - t0)
            await pool.release(pod)
    finally:
        await pool.stop()
        await backend.close()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--acquires", type=int, default=20)
    args = parser.parse_args()
    modes = [True, False] if shutil.which("bwrap") else [False]
    with tempfile.TemporaryDirectory(prefix="kcr-pool-bench-") as tmp:
        for sandbox in modes:
            label = "sandboxed  " if sandbox else "unsandboxed"
            t = await start_times(Path(tmp) / f"start-{sandbox}", sandbox, args.pods)
            print(f"create -> ready, {label}: {summary(t)}")
        for sandbox in modes:
            label = "sandboxed  " if sandbox else "unsandboxed"
            t = await acquire_times(Path(tmp) / f"acq-{sandbox}", sandbox, args.acquires)
            print(f"acquire (warm pool), {label}: {summary(t)}")


if __name__ == "__main__":
    asyncio.run(main())

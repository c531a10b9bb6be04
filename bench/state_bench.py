"""Time put_state / get_state of 1 MB, 10 MB and 100 MB blobs on Redis and SQLite.

Usage::

    python bench/state_bench.py                      # starts a throw-away redis-server
    python bench/state_bench.py --redis-url redis://127.0.0.1:6379/15 --repeat 5

Prints one line per (store, size): median seconds and MB/s for put and get.
Blobs are random bytes (state blobs are lz4-compressed, so incompressible is
the realistic case). Nothing is asserted: this is for reading numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager

from kcr_kernels.stores import open_kernel_store

SIZES = {"1MB": 1_000_000, "10MB": 10_000_000, "100MB": 100_000_000}


@contextmanager
def throwaway_redis():
    """A redis-server on a free loopback port, no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server not found; pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="kcr-bench-redis-")
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", folder]
    cmd += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def bench_store(url: str, label: str, repeat: int) -> None:
    store = open_kernel_store(url, timeout=30)
    try:
        for name, size in SIZES.items():
            blob = os.urandom(size)
            puts, gets = [], []
            for i in range(repeat):
                kernel_id = f"bench-{name}-{i}"
                t0 = time.perf_counter()
                await store.put_state(kernel_id, blob, {"names": ["x"], "created": time.time()})
                t1 = time.perf_counter()
                got = await store.get_state(kernel_id)
                t2 = time.perf_counter()
                assert got is not None and len(got[0]) == size
                puts.append(t1 - t0)
                gets.append(t2 - t1)
                await store.delete_state(kernel_id)
            put, get = statistics.median(puts), statistics.median(gets)
            print(
                f"{label:7} {name:>6}  put {put * 1000:8.1f} ms ({size / put / 1e6:7.0f} MB/s)"
                f"  get {get * 1000:8.1f} ms ({size / get / 1e6:7.0f} MB/s)"
            )
    finally:
        await store.close()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kcr-bench-sqlite-") as folder:
        await bench_store(f"sqlite://{folder}/kcr.db", "sqlite", args.repeat)
    if args.redis_url:
        await bench_store(args.redis_url, "redis", args.repeat)
    else:
        with throwaway_redis() as url:
            await bench_store(url, "redis", args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median shown)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

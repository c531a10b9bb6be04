"""Median round trip of a trivial cell per language through a real runner.

    python bench/languages_bench.py [--executes 10] [--languages c,go,...]

"first cell s" is the time from starting the runner to the reply of its first cell (the
trivial cell, or SETUP): the worker's start-up a pod pays once, while it waits in the pool.
Languages whose toolchain is missing are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kcr_runner.languages import LANGUAGES

from tests.runner.conftest import RunnerProcess

TRIVIAL = {
    "python": "1",
    "javascript": "1",
    "typescript": "n = inc(n) + {i}",
    "bash": "true",
    "c": "int a = 1; (void)a;",
    "cpp": "int a = 1; (void)a;",
    "go": "_ = 1",
    "rust": "let _a = 1;",
    "java": "int a = 1;",
    "php": "$a = 1;",
    "r": "a <- 1",
    "fortran": "integer :: a\na = 1",
    "d": "int a = 1;",
}

# "{i}" is the cell's number (a new text per cell: nothing cached by text).
# SETUP runs once before the timed cells (the TypeScript cell type-checks against these).
SETUP = {"typescript": "var n: number = 1\nfunction inc(v: number): number { return v + 1 }"}


async def bench(language: str, executes: int) -> tuple[float, list[float]]:
    """``(seconds from the runner's start to the first cell's reply, timed round trips)``."""
    started = time.perf_counter()
    runner = RunnerProcess(Path(tempfile.mkdtemp()), "--language", language)
    try:
        channel = await runner.channel()
        cell = TRIVIAL[language]
        _, reply = await channel.execute(SETUP.get(language, cell.replace("{i}", "0")), timeout=120)
        first = time.perf_counter() - started
        assert reply["content"]["status"] == "ok", reply
        await channel.execute(cell.replace("{i}", "0"), timeout=120)  # warm-up (caches, JIT)
        times = []
        for i in range(executes):
            start = time.perf_counter()
            _, reply = await channel.execute(cell.replace("{i}", str(i + 1)), timeout=120)
            times.append(time.perf_counter() - start)
            assert reply["content"]["status"] == "ok", reply
        await channel.close()
        return first, times
    finally:
        runner.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executes", type=int, default=10)
    parser.add_argument("--languages", default=",".join(LANGUAGES))
    args = parser.parse_args()
    header = f"{'language':<12} {'median ms':>10} {'min ms':>8} {'first cell s':>13}"
    print(f"{header}  (n={args.executes})")
    for language in args.languages.split(","):
        missing = [t for t in LANGUAGES[language].toolchain if shutil.which(t) is None]
        if missing:
            print(f"{language:<12} skipped: {', '.join(missing)} not installed")
            continue
        first, times = await bench(language, args.executes)
        median, fastest = statistics.median(times) * 1e3, min(times) * 1e3
        print(f"{language:<12} {median:>10.1f} {fastest:>8.1f} {first:>13.2f}")


if __name__ == "__main__":
    asyncio.run(main())

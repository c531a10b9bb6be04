"""What the notebook-folder sync (kcr's Jupyter Server extension) costs a cell.

Usage::

    python bench/folder_sync_bench.py [--files 1000] [--cells 60] [--big-mb 100]

Starts a ``kcr-gateway`` and a Jupyter Server with ``--gateway-url`` and the extension
(real processes on 127.0.0.1, the test suite's helpers), then measures through the server's
kernel WebSocket, as JupyterLab uses it:

* **per-cell cost**: ``1+1`` round trips (execute_request → execute_reply + idle) of a
  notebook whose folder holds ``--files`` unchanged small files (sync on), against the same
  in a notebook whose metadata turns the sync off; the difference of the medians is what
  the sync adds to a cell (target ≤ 10 ms for 1,000 files);
* **time to first cell**: session start → the first cell's reply, with ``--big-mb`` MB in
  the folder (ten files), against an empty folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.jupyter_server.client import KernelChannels, ServerAPI
from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess

GATEWAY_TOKEN = "bench-gateway-token"
SERVER_TOKEN = "bench-server-token"


def notebook(path: Path, sync: bool) -> None:
    meta = {} if sync else {"kcr": {"folder_sync": False}}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def cell_times(
    api: ServerAPI, path: str, cells: int, server_pid: int = 0
) -> tuple[list[float], float, float]:
    """(round trip of each ``1+1`` after the first, seconds from session start to the
    first reply, CPU seconds the Jupyter Server spent per measured cell)."""
    started = time.perf_counter()
    model = await api.start_session(path=path)
    ch = await KernelChannels.open(api, model["kernel"]["id"], model["id"])
    try:
        first = await ch.execute("1+1", timeout=600)
        assert first.reply["status"] == "ok", first.reply
        to_first = time.perf_counter() - started
        # The first sync of a big folder may go on in the background (KCRFolderSync.
        # wait_timeout): measure once it is done.
        deadline = time.monotonic() + 600
        while _stderr(first) and "goes on in the background" in _stderr(first):
            if time.monotonic() > deadline:
                raise RuntimeError("the first sync did not finish within 600 s")
            first = await ch.execute("1+1", timeout=600)
        times = []
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        for _ in range(cells):
            t0 = time.perf_counter()
            run = await ch.execute("1+1")
            times.append(time.perf_counter() - t0)
            assert run.reply["status"] == "ok"
        cpu = (cpu_seconds(server_pid) - cpu0) / max(cells, 1) if server_pid else 0.0
        return times, to_first, cpu
    finally:
        ch.close()
        await api.call("DELETE", f"/api/sessions/{model['id']}")


def _stderr(run) -> str:
    return "".join(
        m["content"]["text"]
        for m in run.outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )


def ms(values: list[float], q: float = 0.5) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def main_async(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="kcr-folder-bench-"))
    gateway = GatewayProcess(
        work / "gateway", GATEWAY_TOKEN, args=['--KCRGateway.pools={"python": {"warm": 2}}']
    )
    gateway.start()
    server = JupyterServerProcess(
        work / "jupyter",
        gateway,
        SERVER_TOKEN,
        args=[
            "--ServerApp.jpserver_extensions=kcr_kernels.server_extension=True",
            f"--KCRFolderSync.max_files={args.files + 100}",
        ],
    )
    server.start()
    api = ServerAPI(server.url, server.token)
    root = server.root_dir
    try:
        rows = []
        for name, sync in (("on", True), ("off", False)):
            folder = root / f"many-{name}"
            folder.mkdir()
            for i in range(args.files):
                sub = folder / f"d{i // 100:02}"
                sub.mkdir(exist_ok=True)
                (sub / f"f{i:04}.txt").write_text(f"file {i}\n")
            notebook(folder / "nb.ipynb", sync)
            times, _, cpu = await cell_times(
                api, f"many-{name}/nb.ipynb", args.cells, server.proc.pid
            )
            rows.append((name, times, cpu))
        (_, on, cpu_on), (_, off, cpu_off) = rows
        print(f"per-cell `1+1` through Jupyter Server, {args.files} unchanged files in the folder")
        print(f"  sync on : p50 {ms(on):6.2f} ms  p90 {ms(on, 0.9):6.2f} ms")
        print(f"  sync off: p50 {ms(off):6.2f} ms  p90 {ms(off, 0.9):6.2f} ms")
        print(f"  added by the sync (p50 difference): {ms(on) - ms(off):6.2f} ms")
        print(
            f"  Jupyter Server CPU per cell: {cpu_on * 1e3:.2f} ms on, {cpu_off * 1e3:.2f} ms off"
            f" (+{(cpu_on - cpu_off) * 1e3:.2f} ms)"
        )

        big = root / "big"
        big.mkdir()
        chunk = os.urandom(1 << 20)
        per_file = max(1, args.big_mb // 10)
        for i in range(10):
            with open(big / f"blob{i}.bin", "wb") as f:  # noqa: ASYNC230 (set-up)
                for _ in range(per_file):
                    f.write(chunk)
        notebook(big / "nb.ipynb", True)
        empty = root / "empty"
        empty.mkdir()
        notebook(empty / "nb.ipynb", True)
        _, first_empty, _ = await cell_times(api, "empty/nb.ipynb", 0)
        _, first_big, _ = await cell_times(api, "big/nb.ipynb", 0)
        print(f"time to first cell (session start → first reply), {10 * per_file} MB in 10 files")
        print(f"  empty folder: {first_empty:6.2f} s")
        print(f"  {10 * per_file} MB      : {first_big:6.2f} s")
    finally:
        server.stop()
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=60)
    parser.add_argument("--big-mb", type=int, default=100)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

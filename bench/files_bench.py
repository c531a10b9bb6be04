"""Benchmark of kernel files through the gateway: upload/download throughput, post-cell
sync latency, and the gateway's memory while a large file streams.

Runs a real kcr-gateway in this process (sandboxed pods from the local backend) with its
files API and workspace sync on a file store (a temporary folder by default, or
``--files-url s3://bucket/prefix`` with ``--s3-endpoint``). The client runs in the same
process, so the RSS numbers bound the gateway and the client together.

    python bench/files_bench.py [--size-mb 100] [--big-mb 200] [--syncs 200]
        [--files-url URL] [--s3-endpoint URL]
    python bench/files_bench.py --many-files 100000

``--many-files N`` measures a big tree instead: a cell writes N small files; reported are
the time until the kernel answers ``1+1`` right after that cell (through the gateway's
WebSocket, so a sync that holds the kernel shows up here), the time until the tree is in the
store, an incremental sync after a cell that changed 10 files, and a sync when nothing
changed.

Prints one JSON object. ``sync_unchanged`` is the time ``WorkspaceSync.sync`` adds after a
cell that changed nothing (target < 5 ms); ``sync_100_changed`` after a cell that rewrote
100 small files (1 KiB each).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, machine_line, summarize_ms
from kcr_gateway.app import KCRGateway
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect
from traitlets.config import Config

MiB = 1 << 20


class BenchGateway(KCRGateway):
    """The gateway as configured, with runners that accept bodies up to 1 GiB."""

    def make_backend(self):
        backend = super().make_backend()
        backend.runner_args += ["--max-request-bytes", str(1 << 30)]
        return backend


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


async def put(client, url: str, size: int) -> tuple[float, str]:
    block = os.urandom(MiB)
    digest = hashlib.sha256()

    async def produce(write):
        for i in range(size // MiB):
            piece = i.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            await write(piece)

    started = time.perf_counter()
    r = await client.fetch(
        HTTPRequest(
            url,
            method="PUT",
            body_producer=produce,
            headers={"Content-Length": str(size)},
            request_timeout=600,
        ),
        raise_error=False,
    )
    assert r.code == 201, r.body
    return time.perf_counter() - started, digest.hexdigest()


async def get(client, url: str) -> tuple[float, str, int]:
    digest = hashlib.sha256()
    n = 0

    def on_chunk(data: bytes) -> None:
        nonlocal n
        n += len(data)
        digest.update(data)

    started = time.perf_counter()
    r = await client.fetch(
        HTTPRequest(url, streaming_callback=on_chunk, request_timeout=600), raise_error=False
    )
    assert r.code == 200, r.code
    return time.perf_counter() - started, digest.hexdigest(), n


async def main(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kcr-files-bench-"))
    config = Config()
    config.KCRGateway.files_url = args.files_url or f"file://{work}/files"
    if args.s3_endpoint:
        config.KCRGateway.s3_endpoint_url = args.s3_endpoint
        config.KCRGateway.s3_create_bucket = True
    config.KCRGateway.max_file_bytes = 0
    config.KCRGateway.max_kernel_bytes = 0
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(work / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 1}}
    config.KCRGateway.auth_token = ""
    app = BenchGateway(config=config)
    await app.start_async()
    await app.pool.wait_warm(60)
    base = f"http://127.0.0.1:{app.port}"
    client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 40)
    km = app.kernel_manager
    sync = app.workspace_sync
    result: dict = {
        "machine": machine_line(machine_info(["tornado", "boto3"])),
        "store": app.files_url,
    }
    try:
        kernel_id = await km.start_kernel("kcr-python")
        kernel = km.get_kernel(kernel_id)
        files = f"{base}/api/kernels/{kernel_id}/files"

        async def unchanged_syncs() -> dict:
            await sync.sync(kernel_id, kernel.runner)
            times = []
            for _ in range(args.syncs):
                started = time.perf_counter()
                r = await sync.sync(kernel_id, kernel.runner)
                times.append(time.perf_counter() - started)
                assert not r.uploaded and not r.deleted and r.error is None
            return summarize_ms(times)

        # Post-cell sync after a cell that rewrote 100 small files (1 KiB each) ...
        times = []
        for round_ in range(5):
            code = (
                "import os\nos.makedirs('many', exist_ok=True)\n"
                f"for i in range(100):\n    open(f'many/f{{i}}.txt', 'w').write('{round_}' * 1024)"
            )
            await execute(kernel, code)
            started = time.perf_counter()
            r = await sync.sync(kernel_id, kernel.runner)
            times.append(time.perf_counter() - started)
            assert len(r.uploaded) == 100 and r.error is None, r
        result["sync_100_changed"] = summarize_ms(times)
        # ... and when nothing changed (the workspace holds those 100 files).
        result["sync_unchanged_100_small_files"] = await unchanged_syncs()

        seconds, sent = await put(client, f"{files}/bench/upload.bin", args.size_mb * MiB)
        result["upload_MiB_per_s"] = round(args.size_mb / seconds, 1)
        seconds, got, n = await get(client, f"{files}/bench/upload.bin")
        assert got == sent and n == args.size_mb * MiB
        result["download_MiB_per_s"] = round(args.size_mb / seconds, 1)
        # The runner hashes every file for each listing: a big file costs every sync.
        result[f"sync_unchanged_with_a_{args.size_mb}MB_file"] = await unchanged_syncs()

        # Memory while a big file streams up and down.
        await client.fetch(f"{files}/bench", method="DELETE", raise_error=False)
        # Reset the peak RSS (VmHWM) to the current RSS.
        await asyncio.to_thread(Path("/proc/self/clear_refs").write_text, "5")
        before = rss_kib("VmRSS")
        _, sent = await put(client, f"{files}/bench/big.bin", args.big_mb * MiB)
        _, got, _ = await get(client, f"{files}/bench/big.bin")
        assert got == sent
        result[f"rss_growth_MiB_{args.big_mb}MB_up_and_down"] = round(
            (rss_kib("VmHWM") - before) / 1024, 1
        )
        await km.shutdown_kernel(kernel_id)
    finally:
        client.close()
        await app.stop_async()
        await sync.store.close()
    return result


async def ws_execute(ws, code: str) -> dict:
    """Send an execute_request on a gateway WebSocket; the execute_reply's content."""
    msg_id = os.urandom(8).hex()
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "session": "bench",
        "username": "bench",
        "version": "5.3",
        "date": "",
    }
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
    msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    await ws.write_message(json.dumps({**msg, "channel": "shell"}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.read_message(), 1200))
        if (
            frame.get("msg_type") == "execute_reply"
            and frame.get("parent_header", {}).get("msg_id") == msg_id
        ):
            return frame["content"]


async def many_files(args) -> dict:
    """The big-tree measurement (``--many-files N``)."""
    work = Path(tempfile.mkdtemp(prefix="kcr-files-bench-"))
    config = Config()
    config.KCRGateway.files_url = f"file://{work}/files"
    config.KCRGateway.max_file_bytes = 0
    config.KCRGateway.max_kernel_bytes = 0
    if hasattr(KCRGateway, "max_kernel_files"):
        config.KCRGateway.max_kernel_files = 0
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(work / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 1}}
    config.KCRGateway.auth_token = ""
    app = BenchGateway(config=config)
    await app.start_async()
    await app.pool.wait_warm(60)
    n = args.many_files
    result: dict = {"machine": machine_line(machine_info(["tornado"])), "files": n}
    km = app.kernel_manager
    sync = app.workspace_sync
    try:
        kernel_id = await km.start_kernel("kcr-python")
        kernel = km.get_kernel(kernel_id)
        ws = await websocket_connect(
            f"ws://127.0.0.1:{app.port}/api/kernels/{kernel_id}/channels",
            max_message_size=1 << 30,
        )
        await ws_execute(ws, "1")
        write = (
            "import os\nos.makedirs('tree', exist_ok=True)\n"
            f"for i in range({n}):\n"
            "    d = f'tree/d{i // 1000}'\n"
            "    i % 1000 or os.makedirs(d, exist_ok=True)\n"
            "    open(f'{d}/f{i}.txt', 'w').write('x' * 100)"
        )
        started = time.perf_counter()
        reply = await ws_execute(ws, write)
        assert reply["status"] == "ok", reply
        result["cell_writing_files_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        reply = await ws_execute(ws, "1+1")
        assert reply["status"] == "ok", reply
        result["next_1+1_after_the_cell_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        await sync.sync(kernel_id, kernel.runner)  # waits for (or does) the cell's sync
        stored = len(await sync.store.list(kernel_id))
        result["tree_in_store_s"] = round(time.perf_counter() - started, 2)
        assert stored == n, (stored, n)
        touch = "for i in range(10): open(f'tree/d0/f{i}.txt', 'a').write('y')"
        reply = await ws_execute(ws, touch)
        assert reply["status"] == "ok", reply
        started = time.perf_counter()
        r = await sync.sync(kernel_id, kernel.runner)
        result["sync_10_changed_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        r = await sync.sync(kernel_id, kernel.runner)
        result["sync_unchanged_s"] = round(time.perf_counter() - started, 3)
        assert not r.uploaded, r
        ws.close()
        await km.shutdown_kernel(kernel_id)
    finally:
        await app.stop_async()
        await sync.store.close()
    return result


async def execute(kernel, code: str) -> None:
    reply = await kernel.runner.request("execute", {"code": code, "silent": False})
    assert reply["content"]["status"] == "ok", reply


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--syncs", type=int, default=100)
    parser.add_argument("--files-url", default=None)
    parser.add_argument("--s3-endpoint", default=None)
    parser.add_argument("--many-files", type=int, default=0, help="measure a big tree instead")
    options = parser.parse_args()
    run = many_files if options.many_files else main
    print(json.dumps(asyncio.run(run(options)), indent=2))

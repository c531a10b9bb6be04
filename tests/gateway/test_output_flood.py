"""A cell flooding display() cannot take the gateway down (issue 21).

A real ``kcr-gateway`` process (so its memory can be read from ``/proc``) with real sandboxed
Python kernels. One kernel floods ``display()``; one client reads it, one never reads; a
bystander kernel answers ``1+1`` throughout. Asserted: the gateway's RSS stays bounded, the
reading client gets the truncation notice and the cell's ``execute_reply``, the non-reading
client is disconnected with close code 1008 and a reason, the bystander keeps answering.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import WSKernelClient, http, start_kernel, wait_for

MiB = 1024 * 1024
V1 = "v1.kernel.websocket.jupyter.org"
BUFFER = 1 * MiB  # the gateway's per-connection buffer, small so one flood overflows it
SLOW_TIMEOUT = 3.0
NOTICE = "[kcr] Output limit reached (10 MiB per cell): further output of this cell is not shown."
RSS_GROWTH_LIMIT = 64 * MiB

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")


class GatewayProcess:
    """``python -m kcr_gateway.app`` on a free port, its log collected by a thread."""

    def __init__(self, data_dir, *args: str):
        command = [sys.executable, "-m", "kcr_gateway.app", "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [*command, "--port=0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.port: int | None = None
        self.warm = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self.warm.wait(120):
            self.stop()
            raise RuntimeError("the gateway did not warm up:\n" + "".join(self.log[-30:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
            if "All pools are warm" in line:
                self.warm.set()

    def rss(self) -> int:
        """The gateway's resident memory in bytes (VmRSS in /proc/<pid>/status)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def gateway_process(tmp_path_factory):
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("flood"),
        f"--KCRWebsocketConnection.max_buffer_bytes={BUFFER}",
        f"--KCRWebsocketConnection.slow_client_timeout={SLOW_TIMEOUT}",
    )
    yield gateway
    gateway.stop()


async def connect_non_reading(base: str, kernel_id: str, subprotocols=None):
    """A WebSocket client that never reads: tornado stops reading its socket once one
    message waits, and a small receive buffer keeps the OS from absorbing much (not tiny: a
    window of a few KiB would make the final read crawl)."""
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url), subprotocols=subprotocols)
    ws.protocol.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return ws


async def connections(base: str, kernel_id: str) -> int:
    return (await http(base, "GET", f"/api/kernels/{kernel_id}")).json()["connections"]


@pytest_asyncio.fixture(loop_scope="module")
async def kernels(gateway_process):
    base = gateway_process.url
    flood_id, bystander_id = await start_kernel(base), await start_kernel(base)
    yield flood_id, bystander_id
    for kernel_id in (flood_id, bystander_id):
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")


FLOODS = {
    # payload size: number of display() calls (100 MB and 50 MB requested; 10 MiB allowed)
    100_000: 1_000,
    1_000: 50_000,
}


@pytest.mark.parametrize("payload", sorted(FLOODS, reverse=True))
async def test_display_flood_keeps_the_gateway_bounded(gateway_process, kernels, payload):
    base = gateway_process.url
    flood_id, bystander_id = kernels
    reader = await WSKernelClient.connect(base, flood_id)
    bystander = await WSKernelClient.connect(base, bystander_id)
    slow = await connect_non_reading(base, flood_id)
    try:
        assert (await reader.execute("1+1")).outputs("execute_result")
        assert (await bystander.execute("1+1")).outputs("execute_result")
        assert await connections(base, flood_id) == 2
        rss_before = gateway_process.rss()
        rss_peak = rss_before

        code = (
            f"for i in range({FLOODS[payload]}):\n"
            f"    display({{'text/plain': 'x' * {payload}}}, raw=True)"
        )
        flood = reader.send(reader.make("execute_request", _execute(code)))
        started = time.monotonic()
        answers: list[float] = []
        slow_close: dict = {}

        async def watch_slow_client() -> None:
            while True:  # the gateway disconnects it during the flood
                if await connections(base, flood_id) == 1:
                    break
                await asyncio.sleep(0.1)
            while await slow.read_message() is not None:  # what was queued, then the close
                pass
            slow_close.update(code=slow.close_code, reason=slow.close_reason)

        watcher = asyncio.ensure_future(watch_slow_client())
        while flood.reply is None or not watcher.done():
            t0 = time.monotonic()
            result = await bystander.execute("1+1", timeout=30)
            answers.append(time.monotonic() - t0)
            assert result.outputs("execute_result")[0]["data"]["text/plain"] == "2"
            rss_peak = max(rss_peak, gateway_process.rss())
            assert time.monotonic() - started < 100, (
                f"the flood did not end: reply {flood.reply is not None}, slow client closed "
                f"{watcher.done()}, {len(flood.iopub)} iopub messages, connections "
                f"{await connections(base, flood_id)}; gateway log:\n"
                + "".join(gateway_process.log[-20:])
            )
        await watcher
        await wait_for(lambda: _idle(flood), 30, "idle after the flood")
        rss_after = gateway_process.rss()

        stderr = flood.stderr
        shown = [m for m in flood.iopub if m["msg_type"] == "display_data"]
        print(
            f"\npayload {payload} B x {FLOODS[payload]}: gateway RSS before "
            f"{rss_before / MiB:.1f} MiB, peak {rss_peak / MiB:.1f} MiB, after "
            f"{rss_after / MiB:.1f} MiB (growth {(rss_peak - rss_before) / MiB:.1f} MiB); "
            f"{len(shown)} display_data shown; flood took {time.monotonic() - started:.1f} s; "
            f"bystander 1+1: {len(answers)} answers, max {max(answers) * 1000:.0f} ms; "
            f"slow client: {slow_close}"
        )
        assert flood.reply["content"]["status"] == "ok"
        assert stderr.count(NOTICE) == 1
        assert 0 < len(shown) < FLOODS[payload]
        assert slow_close["code"] == 1008
        assert slow_close["reason"].startswith("client too slow: ")
        assert "MiB of output unread" in slow_close["reason"]
        assert any("client too slow" in line for line in gateway_process.log)
        assert answers, "the bystander kernel was never asked during the flood"
        assert rss_peak - rss_before <= RSS_GROWTH_LIMIT
        # the kernel survived its flood and the reading client is still attached
        assert (await reader.execute("1+1")).outputs("execute_result")
    finally:
        reader.close()
        bystander.close()
        slow.close()


def _execute(code: str) -> dict:
    return {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


def _idle(entry) -> bool:
    return any(
        m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in entry.iopub
    )


@pytest.mark.parametrize("subprotocols", [None, [V1]], ids=["legacy", "v1"])
async def test_a_client_that_never_reads_cannot_grow_the_gateway(
    gateway_process, kernels, subprotocols
):
    """Eight flood cells (80 MiB shown in all) while one client never reads: without a bound
    per connection the gateway would hold all of it for that client (measured: +76 MiB with
    the bound switched off, and the client still attached)."""
    base = gateway_process.url
    flood_id, _ = kernels
    reader = await WSKernelClient.connect(base, flood_id)
    slow = await connect_non_reading(base, flood_id, subprotocols)
    try:
        assert slow.selected_subprotocol == (subprotocols or [None])[0]
        await reader.execute("1+1")
        rss_before = rss_peak = gateway_process.rss()
        code = "for i in range(200):\n    display({'text/plain': 'x' * 100_000}, raw=True)"
        for _ in range(8):
            cell = await reader.execute(code, timeout=60)
            assert cell.stderr.count(NOTICE) == 1
            rss_peak = max(rss_peak, gateway_process.rss())
        print(
            f"\n8 x 10 MiB to a non-reading client: gateway RSS before {rss_before / MiB:.1f} "
            f"MiB, peak {rss_peak / MiB:.1f} MiB; connections {await connections(base, flood_id)}"
        )
        assert await connections(base, flood_id) == 1  # the non-reading client was dropped
        assert rss_peak - rss_before <= RSS_GROWTH_LIMIT
    finally:
        reader.close()
        slow.close()


async def test_a_slow_reader_is_kept_and_gets_everything_the_budget_allows(
    gateway_process, kernels
):
    """A client that reads, only slower than the kernel writes, pauses the kernel's output
    (back-pressure) instead of being disconnected."""
    base = gateway_process.url
    flood_id, _ = kernels
    slow_reader = await WSKernelClient.connect(base, flood_id)
    read = slow_reader.ws.read_message

    async def read_slowly():
        await asyncio.sleep(0.005)  # about 20 MB/s for these 100 KB messages
        return await read()

    slow_reader.ws.read_message = read_slowly  # before its reader task first runs
    disconnects = sum("client too slow" in line for line in gateway_process.log)
    try:
        code = "for i in range(1000):\n    display({'text/plain': 'x' * 100_000}, raw=True)"
        cell = await slow_reader.execute(code, timeout=90)
        assert cell.reply["content"]["status"] == "ok"
        assert cell.stderr.count(NOTICE) == 1
        assert len(cell.outputs("display_data")) > 100  # 10 MiB of 100 KB displays
        assert not slow_reader.closed.is_set()
        assert await connections(base, flood_id) == 1
        assert sum("client too slow" in line for line in gateway_process.log) == disconnects
    finally:
        slow_reader.close()

"""Fault benchmark: what a user loses, and sees, when the stores fail (issue 14).

Runs a real kcr-gateway in this process (local backend, sandboxed pods) whose file store is
moto's S3 server behind a fault proxy (``tests/fakes/fault_proxy.py``: pass / refuse /
hang), injects each fault while kernels work, and reports per scenario:

* ``kernels_lost``: kernels that no longer answer afterwards;
* ``values_lost``: variables set before the fault that are gone afterwards (0 except the
  documented window of a cell that ran less than ``checkpoint_delay`` before a crash);
* ``files_lost``: files the cells wrote whose content is wrong or missing afterwards;
* ``recovery_s``: seconds from the end of the fault (the store answers again) to the first
  result after it (every file in the store, or the next cell's reply);
* ``message``: what the user saw (the ``[kcr]`` lines on stderr, or the gateway's line).

When ``bench/faults_gateway.py`` exists (the registry / gateway-restart faults), its rows
are run too and printed in the same table.

    hatch run bench:faults [--json out.json] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import machine_info, machine_line  # noqa: E402
from traitlets.config import Config  # noqa: E402

from tests.fakes.fault_proxy import FaultProxyDouble  # noqa: E402
from tests.files.gateway_with_files import TOKEN, FilesGateway  # noqa: E402
from tests.gateway.conftest import WSKernelClient, http, start_kernel, wait_for  # noqa: E402
from tests.services import MotoS3Server  # noqa: E402

BUCKET = "kcr-faults"
FILES = {"a.txt": b"new", "b.txt": b"b"}


def stderr_of(client: WSKernelClient, *replies) -> list[str]:
    messages = [m for r in replies for m in r.iopub] + client.unclaimed
    return [
        m["content"]["text"].strip()
        for m in messages
        if m.get("msg_type") == "stream" and m["content"].get("name") == "stderr"
    ]


class Bench:
    """One gateway on S3 through the proxy; each scenario uses a fresh kernel."""

    def __init__(self, args):
        self.args = args

    async def __aenter__(self) -> Bench:
        self.moto = MotoS3Server().start()
        self.moto.create_bucket(BUCKET)
        self.proxy = FaultProxyDouble("127.0.0.1", self.moto.port).start()
        self.tmp = Path(tempfile.mkdtemp(prefix="kcr-faults-"))
        config = Config()
        config.KCRGateway.port = 0
        config.KCRGateway.data_dir = str(self.tmp / "kcr")
        config.KCRGateway.pools = {"python": {"warm": 2}}
        config.KCRGateway.auth_token = TOKEN
        config.KCRFileSaver.retry_delay = 0.5
        config.KCRFileSaver.retry_max_delay = 2.0
        config.KCRFileSaver.release_wait = 5.0
        config.KCRCuller.cull_idle_timeout = 1
        config.KCRCuller.cull_interval = 3600
        config.KCRCuller.cull_connected = True
        self.app = FilesGateway(config=config)
        self.app.files_options = {
            "url": f"s3://{BUCKET}/files",
            "store_options": {
                **self.moto.client_options(),
                "endpoint_url": self.proxy.url,
                "connect_timeout": 2.0,
                "read_timeout": 15.0,
            },
        }
        await self.app.start_async()
        await self.app.pool.wait_warm(120)
        self.base = f"http://127.0.0.1:{self.app.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.proxy.mode = "pass"
        await self.app.stop_async()
        self.proxy.stop()
        self.moto.stop()

    # -- helpers ------------------------------------------------------------------

    async def kernel(self) -> WSKernelClient:
        kid = await start_kernel(self.base, token=TOKEN)
        return await WSKernelClient.connect(self.base, kid, token=TOKEN)

    async def done(self, client: WSKernelClient) -> None:
        client.close()
        await http(self.base, "DELETE", f"/api/kernels/{client.kernel_id}", token=TOKEN)

    async def stored(self, kid: str) -> dict[str, bytes]:
        store = self.app.workspace_sync.store
        return {e.path: await store.read_bytes(kid, e.path) for e in await store.list(kid)}

    async def until_stored(self, kid: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            files = await self.stored(kid)
            if all(files.get(p) == v for p, v in FILES.items()) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)

    async def work_then_fault(self, client: WSKernelClient, mode: str):
        """v = 42 and a.txt = 'old' saved; then (store faulty) a.txt overwritten, b.txt new."""
        await client.execute("v = 42; open('a.txt', 'w').write('old')")
        await asyncio.sleep(1.5)  # checkpoint_delay: v is checkpointed, a.txt synced
        self.proxy.mode = mode
        return await client.execute(
            "open('a.txt', 'w').write('new'); open('b.txt', 'w').write('b')"
        )

    async def wait_text(self, client, replies, text: str, timeout: float = 60) -> None:
        await wait_for(
            lambda: any(text in t for t in stderr_of(client, *replies)), timeout, repr(text)
        )

    def kill_pod(self, kid: str) -> None:
        process = self.app.kernel_manager.get_kernel(kid).pod.meta["process"]
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)

    async def check(self, client: WSKernelClient) -> tuple[int, int, int, object]:
        """(kernels_lost, values_lost, files_lost, reply) from one cell after the fault."""
        code = (
            "import os\n"
            "print(repr(globals().get('v')), *(open(p).read() if os.path.exists(p) else '-'"
            " for p in ('a.txt', 'b.txt')))"
        )
        try:
            r = await client.execute(code, timeout=120)
        except AssertionError:
            return 1, 1, len(FILES), None
        if r.content.get("status") != "ok":
            return 1, 1, len(FILES), r
        value, *files = r.stdout.split()
        values_lost = 0 if value == "42" else 1
        files_lost = sum(
            1 for f, want in zip(files, FILES.values(), strict=True) if f != want.decode()
        )
        return 0, values_lost, files_lost, r

    # -- scenarios ------------------------------------------------------------------

    async def refused_then_pod_lost(self) -> dict:
        client = await self.kernel()
        cell = await self.work_then_fault(client, "refuse")
        await self.wait_text(client, [cell], "not saved yet")
        await asyncio.sleep(3)
        self.proxy.mode = "pass"
        back = time.monotonic()
        await self.wait_text(client, [cell], "store is back")
        recovery = time.monotonic() - back
        self.kill_pod(client.kernel_id)
        k = self.app.kernel_manager.get_kernel(client.kernel_id)
        await wait_for(lambda: not k.attached, 30, "pod loss noticed")
        lost = await self.check(client)
        row = self.row("S3 refused 3 s while cells write; back; pod lost", lost, recovery)
        row["message"] = " / ".join(stderr_of(client, cell, lost[3]) if lost[3] else [])
        await self.done(client)
        return row

    async def refused_then_culled(self) -> dict:
        client = await self.kernel()
        cell = await self.work_then_fault(client, "refuse")
        await self.wait_text(client, [cell], "not saved yet")
        await asyncio.sleep(1.2)
        km = self.app.kernel_manager
        postponed = client.kernel_id not in await km.cull_idle_kernels()
        self.proxy.mode = "pass"
        back = time.monotonic()
        culled = client.kernel_id in await km.cull_idle_kernels()
        recovery = time.monotonic() - back
        lost = await self.check(client)
        row = self.row(
            "S3 refused; culled during (postponed) and after it came back", lost, recovery
        )
        notes = [
            f"hibernation postponed during the outage: {postponed}; hibernated after: {culled}"
        ]
        row["message"] = " / ".join(
            notes + stderr_of(client, cell, *([lost[3]] if lost[3] else []))
        )
        await self.done(client)
        return row

    async def pod_lost_during_outage(self) -> dict:
        client = await self.kernel()
        cell = await self.work_then_fault(client, "refuse")
        await self.wait_text(client, [cell], "not saved yet")
        self.kill_pod(client.kernel_id)
        k = self.app.kernel_manager.get_kernel(client.kernel_id)
        await wait_for(lambda: not k.attached, 30, "pod loss noticed")
        self.proxy.mode = "pass"
        back = time.monotonic()
        lost = await self.check(client)
        row = self.row(
            "S3 refused; pod lost during the outage (documented loss: named)",
            lost,
            time.monotonic() - back,
        )
        row["message"] = " / ".join(stderr_of(client, cell, *([lost[3]] if lost[3] else [])))
        await self.done(client)
        return row

    async def hung(self) -> dict:
        client = await self.kernel()
        cell = await self.work_then_fault(client, "hang")
        started = time.monotonic()
        r = await client.execute("1 + 1", timeout=120)
        next_cell = time.monotonic() - started
        self.proxy.mode = "pass"
        back = time.monotonic()
        await self.until_stored(client.kernel_id)
        recovery = time.monotonic() - back
        lost = await self.check(client)
        row = self.row("S3 hung while a cell's sync runs; next cell", lost, recovery)
        row["message"] = f"next cell answered in {next_cell:.2f} s " + " / ".join(
            stderr_of(client, cell, r)
        )
        await self.done(client)
        return row

    def row(self, scenario: str, lost, recovery: float) -> dict:
        kernels, values, files, _reply = lost
        return {
            "scenario": scenario,
            "kernels_lost": kernels,
            "values_lost": values,
            "files_lost": files,
            "recovery_s": round(recovery, 2),
            "message": "",
        }


def not_s3_endpoint() -> dict:
    """A files_url whose endpoint answers HTTP 200 with an HTML page: the gateway's line."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>It works!</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_PUT = do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "kcr_gateway.app",
                "--port=0",
                f"--data-dir={tmp}",
                "--KCRGateway.files_url=s3://bucket/files",
                f"--KCRGateway.s3_endpoint_url={endpoint}",
                "--KCRGateway.s3_region=us-east-1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    server.shutdown()
    line = next((x for x in r.stderr.splitlines() if "error" in x.lower()), r.stderr.strip())
    return {
        "scenario": f"files_url endpoint answers but is not S3 (exit {r.returncode})",
        "kernels_lost": 0,
        "values_lost": 0,
        "files_lost": 0,
        "recovery_s": round(time.monotonic() - started, 2),
        "message": line,
    }


SCENARIOS = ("refused_then_pod_lost", "refused_then_culled", "pod_lost_during_outage", "hung")


async def main_async(args) -> list[dict]:
    rows: list[dict] = []
    wanted = [s for s in SCENARIOS if not args.only or args.only in s]
    if wanted:
        async with Bench(args) as bench:
            for name in wanted:
                print(f"... {name}", file=sys.stderr, flush=True)
                rows.append(await getattr(bench, name)())
    if not args.only or args.only in "not_s3":
        rows.append(await asyncio.to_thread(not_s3_endpoint))
    try:
        from faults_gateway import run as run_gateway_faults
    except ImportError:
        print(
            "(bench/faults_gateway.py not found: registry/gateway faults not run)", file=sys.stderr
        )
    else:
        if not args.only or args.only == "gateway":
            rows.extend(await run_gateway_faults(args))
    return rows


def table(rows: list[dict]) -> str:
    keys = ["scenario", "kernels_lost", "values_lost", "files_lost", "recovery_s", "message"]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        cells = [
            "-" if row.get(k) is None else str(row[k]).replace("|", "\\|").replace("\n", " ")
            for k in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--kernels", type=int, default=3, help="faults_gateway: kernels each")
    parser.add_argument("--tries", type=int, default=10, help="faults_gateway: pod kills")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    print(machine_line(machine_info(["boto3", "moto", "tornado"])))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

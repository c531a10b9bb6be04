"""No file a cell wrote is lost to an S3 outage (issue 14): real gateway, real sandboxed pods,
moto's S3 server behind a :class:`FaultProxyDouble` that refuses or hangs on command.

One gateway for the module; each test uses its own kernel and leaves the proxy passing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_asyncio
from traitlets.config import Config

from tests.fakes.fault_proxy import FaultProxyDouble
from tests.files.gateway_with_files import TOKEN, FilesGateway
from tests.gateway.conftest import WSKernelClient, http, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: the bound a request may wait on a background sync (KCRFileSaver.sync_wait)
SYNC_WAIT = 1.0
#: S3 read timeout of the gateway's store: a hung request takes 2 x this to fail
READ_TIMEOUT = 20.0


#: the module's gateway; the last test replaces it (None: stopped)
_apps: list[FilesGateway | None] = []


@pytest.fixture(scope="module")
def proxy(s3_server):
    proxy = FaultProxyDouble("127.0.0.1", s3_server.port).start()
    yield proxy
    proxy.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory, proxy, s3_url, s3_options):
    tmp = tmp_path_factory.mktemp("faults")
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(tmp / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 1}}
    config.KCRGateway.auth_token = TOKEN
    config.KCRFileSaver.sync_wait = SYNC_WAIT
    config.KCRFileSaver.retry_delay = 0.2
    config.KCRFileSaver.retry_max_delay = 1.0
    config.KCRFileSaver.release_wait = 5.0
    config.KCRCuller.cull_idle_timeout = 1
    config.KCRCuller.cull_interval = 3600  # the tests cull by hand
    config.KCRCuller.cull_connected = True
    app = FilesGateway(config=config)
    app.files_options = {
        "url": s3_url,
        "store_options": {
            **s3_options,
            "endpoint_url": proxy.url,
            "connect_timeout": 1.0,
            "read_timeout": READ_TIMEOUT,
        },
    }
    await app.start_async()
    await app.pool.wait_warm(60)
    _apps.append(app)
    yield app
    proxy.mode = "pass"
    if _apps[-1] is not None:  # the last test may have stopped it and started another
        await _apps[-1].stop_async()


@pytest.fixture
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture
def passing(proxy):
    yield proxy
    proxy.mode = "pass"


@pytest_asyncio.fixture(loop_scope="module")
async def kernel(base, passing):
    kernel_id = await start_kernel(base, token=TOKEN)
    client = await WSKernelClient.connect(base, kernel_id, token=TOKEN)
    yield client
    client.close()
    await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=TOKEN)


async def run(kernel: WSKernelClient, code: str) -> str:
    r = await kernel.execute(code)
    assert r.content["status"] == "ok", r.content
    return r.stdout


def stderr_lines(kernel: WSKernelClient, *replies) -> list[str]:
    """Every stderr text the kernel sent to this client (replies' and unparented)."""
    messages = [m for r in replies for m in r.iopub] + kernel.unclaimed
    return [
        m["content"]["text"]
        for m in messages
        if m.get("msg_type") == "stream" and m["content"].get("name") == "stderr"
    ]


async def stored(gateway, kernel_id: str) -> dict[str, bytes]:
    store = gateway.workspace_sync.store
    return {e.path: await store.read_bytes(kernel_id, e.path) for e in await store.list(kernel_id)}


async def wait_stored(gateway, kernel_id: str, want: dict[str, bytes], timeout: float = 60):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        files = await stored(gateway, kernel_id)
        if all(files.get(p) == v for p, v in want.items()):
            return files
        assert loop.time() < deadline, f"the store never got {want}: {files}"
        await asyncio.sleep(0.1)


async def wait_text(kernel, replies, text: str, timeout: float = 60) -> str:
    found: list[str] = []

    def seen() -> bool:
        found[:] = [t for t in stderr_lines(kernel, *replies) if text in t]
        return bool(found)

    await wait_for(seen, timeout, f"stderr saying {text!r}")
    return found[0]


def kill_pod(gateway, kernel_id: str) -> None:
    process = gateway.kernel_manager.get_kernel(kernel_id).pod.meta["process"]
    os.killpg(os.getpgid(process.pid), signal.SIGKILL)


async def write_during_outage(gateway, kernel, proxy, mode: str = "refuse"):
    """a.txt saved as 'old'; then, with the store down, a.txt overwritten and b.txt written."""
    kid = kernel.kernel_id
    await run(kernel, "open('a.txt', 'w').write('old')")
    await wait_stored(gateway, kid, {"a.txt": b"old"})
    proxy.mode = mode
    return await kernel.execute("open('a.txt', 'w').write('new'); open('b.txt', 'w').write('b')")


async def test_refused_s3_loses_nothing_and_says_so_once_each_way(gateway, kernel, passing):
    kid = kernel.kernel_id
    cell = await write_during_outage(gateway, kernel, passing)
    assert cell.content["status"] == "ok"
    warning = await wait_text(kernel, [cell], "not saved yet")
    assert "a.txt" in warning and "b.txt" in warning, warning
    assert "unreachable" in warning and "saved as soon as the store answers" in warning

    # More work during the same outage: no second warning, and c.txt is kept too.
    later = await kernel.execute("open('c.txt', 'w').write('c')")
    await asyncio.sleep(1.5)  # retries happen meanwhile (retry_delay 0.2 s, up to 1 s)
    assert len([t for t in stderr_lines(kernel, cell, later) if "not saved yet" in t]) == 1

    passing.mode = "pass"
    back = await wait_text(kernel, [cell, later], "The file store is back")
    assert "a.txt" in back and "b.txt" in back and "c.txt" in back, back
    files = await stored(gateway, kid)
    assert files == {"a.txt": b"new", "b.txt": b"b", "c.txt": b"c"}

    # No further cell; the pod dies: the new pod has every file as the cells left them.
    kill_pod(gateway, kid)
    k = gateway.kernel_manager.get_kernel(kid)
    await wait_for(lambda: not k.attached, 30, "pod loss noticed")
    r = await kernel.execute("print(open('a.txt').read(), open('b.txt').read())")
    assert r.stdout == "new b\n"
    assert "not saved" not in r.stderr, r.stderr
    assert len([t for t in stderr_lines(kernel, cell, later, r) if "store is back" in t]) == 1


async def test_hibernation_waits_for_the_store_and_then_keeps_every_file(gateway, kernel, passing):
    kid = kernel.kernel_id
    km = gateway.kernel_manager
    cell = await write_during_outage(gateway, kernel, passing)
    await wait_text(kernel, [cell], "not saved yet")
    await asyncio.sleep(1.2)  # idle past cull_idle_timeout

    # While the store is down, culling postpones hibernation: the pod keeps the files.
    assert kid not in await km.cull_idle_kernels()
    assert km.get_kernel(kid).attached

    # The store is back; the kernel is culled before its retry came round (or after):
    # hibernation saves first, then releases the pod.
    passing.mode = "pass"
    assert kid in await km.cull_idle_kernels()
    k = km.get_kernel(kid)
    assert k.execution_state == "hibernated"
    assert await stored(gateway, kid) == {"a.txt": b"new", "b.txt": b"b"}

    r = await kernel.execute("print(open('a.txt').read(), open('b.txt').read())")
    assert r.stdout == "new b\n"
    assert "not saved" not in r.stderr


async def test_culled_after_the_store_returned_keeps_every_file(gateway, kernel, passing):
    kid = kernel.kernel_id
    km = gateway.kernel_manager
    cell = await write_during_outage(gateway, kernel, passing)
    await wait_text(kernel, [cell], "not saved yet")
    passing.mode = "pass"
    await wait_text(kernel, [cell], "The file store is back")
    await asyncio.sleep(1.2)
    assert kid in await km.cull_idle_kernels()
    r = await kernel.execute("print(open('a.txt').read(), open('b.txt').read())")
    assert r.stdout == "new b\n"


async def test_a_hung_store_does_not_hold_the_next_cell(gateway, kernel, passing):
    kid = kernel.kernel_id
    km = gateway.kernel_manager
    cell = await write_during_outage(gateway, kernel, passing, mode="hang")
    assert cell.content["status"] == "ok"
    # The sync of that cell now waits on S3 (up to 2 x READ_TIMEOUT); the next cell not.
    started = time.monotonic()
    r = await kernel.execute("1 + 1", timeout=2 * READ_TIMEOUT)
    elapsed = time.monotonic() - started
    assert r.content["status"] == "ok"
    assert elapsed < READ_TIMEOUT / 2, f"the cell waited {elapsed:.1f}s on the hung store"

    # A planned release waits at most release_wait, then is postponed: the pod keeps them.
    await asyncio.sleep(1.2)
    assert kid not in await km.cull_idle_kernels()

    # The pod dies while its sync still hangs; new connections to S3 work again. The next
    # cell waits at most sync_wait for that sync, not for S3's timeouts.
    kill_pod(gateway, kid)
    k = km.get_kernel(kid)
    await wait_for(lambda: not k.attached, 30, "pod loss noticed")
    passing.mode = "pass"
    await gateway.pool.wait_warm(60)  # time the wait on the sync, not a cold pod start
    started = time.monotonic()
    r = await kernel.execute("print(open('a.txt').read())", timeout=2 * READ_TIMEOUT)
    elapsed = time.monotonic() - started
    assert r.stdout == "old\n"  # 'new' was only in the dead pod
    assert elapsed < READ_TIMEOUT / 2, f"the cell waited {elapsed:.1f}s for the hung sync"
    assert "Not saved before its old pod went" in r.stderr and "a.txt, b.txt" in r.stderr


async def test_a_gateway_shutdown_during_an_outage_names_the_files_left_behind(
    gateway, base, passing, caplog
):
    """Runs last: it stops the module's gateway and starts another on the same stores."""
    kid = await start_kernel(base, token=TOKEN)
    kernel = await WSKernelClient.connect(base, kid, token=TOKEN)
    cell = await write_during_outage(gateway, kernel, passing)
    await wait_text(kernel, [cell], "not saved yet")
    kernel.close()
    _apps[-1] = None
    with caplog.at_level("WARNING"):
        await gateway.stop_async()  # must release the pod: the files cannot be saved
    logged = [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
    assert any(kid in m and "a.txt, b.txt" in m for m in logged), logged

    passing.mode = "pass"
    successor = FilesGateway(config=gateway.config)
    successor.files_options = gateway.files_options
    await successor.start_async()
    _apps[-1] = successor
    base = f"http://127.0.0.1:{successor.port}"
    client = await WSKernelClient.connect(base, kid, token=TOKEN)
    try:
        r = await client.execute("print(open('a.txt').read())")
        assert r.stdout == "old\n"
        assert "Not saved before its old pod went" in r.stderr, r.stderr
        assert "a.txt, b.txt" in r.stderr
        again = await client.execute("1 + 1")
        assert "Not saved" not in again.stderr  # said once
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kid}", token=TOKEN)


class _NotS3(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_PUT = do_POST = do_GET

    def log_message(self, *args):
        pass


async def test_a_store_url_that_answers_but_is_not_s3_is_one_line(tmp_path):
    import subprocess
    import sys

    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    try:
        r = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "kcr_gateway.app",
                "--port=0",
                f"--data-dir={tmp_path}",
                "--KCRGateway.files_url=s3://bucket/files",
                f"--KCRGateway.s3_endpoint_url={endpoint}",
                "--KCRGateway.s3_region=us-east-1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        server.shutdown()
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr
    assert "bad files_url" in errors[0] and "not as an S3 API" in errors[0], errors[0]
    assert endpoint in errors[0] and "Traceback" not in r.stderr

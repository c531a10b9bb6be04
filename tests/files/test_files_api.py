"""The files API on a real gateway with real sandboxed pods, against S3 (moto) and a folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.files.gateway_with_files import TOKEN, start_files_gateway
from tests.gateway.conftest import WSKernelClient, http, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1 << 20


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["file", "s3"])
async def gateway(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gwfiles")
    if request.param == "s3":
        options = {"url": request.getfixturevalue("s3_url")}
        options["store_options"] = request.getfixturevalue("s3_options")
    else:
        options = {"url": f"file://{tmp}/files"}
    app = await start_files_gateway(tmp, options)
    yield app
    await app.stop_async()


@pytest.fixture
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest_asyncio.fixture(loop_scope="module")
async def kernel(base):
    kernel_id = await start_kernel(base, token=TOKEN)
    client = await WSKernelClient.connect(base, kernel_id, token=TOKEN)
    yield client
    client.close()
    await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=TOKEN)


def files_url(kernel_id: str, path: str = "") -> str:
    return f"/api/kernels/{kernel_id}/files" + (f"/{path}" if path else "")


async def api(base, method, kernel_id, path="", body=None, token=TOKEN, headers=None):
    return await http(base, method, files_url(kernel_id, path), body, token=token, headers=headers)


async def run(kernel: WSKernelClient, code: str) -> str:
    r = await kernel.execute(code)
    assert r.content["status"] == "ok", r.content
    return r.stdout


async def test_an_upload_is_visible_to_the_next_cell(base, kernel):
    r = await api(base, "PUT", kernel.kernel_id, "data/in.csv", b"a,b\n1,2\n")
    assert r.code == 201, r.body
    model = r.json()
    assert model["path"] == "data/in.csv" and model["size"] == 8
    assert model["content_type"] == "text/csv" and model["warning"] is None
    assert model["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()

    assert await run(kernel, "print(open('data/in.csv').read(), end='')") == "a,b\n1,2\n"


async def test_files_the_code_writes_download_byte_identical(base, kernel):
    out = await run(
        kernel,
        "import hashlib, os, matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "os.makedirs('plots', exist_ok=True)\n"
        "plt.plot([1, 3, 2]); plt.savefig('plots/fig.png')\n"
        "open('table.csv', 'w').write('x,y\\n' + ''.join(f'{i},{i*i}\\n' for i in range(1000)))\n"
        "print(*(hashlib.sha256(open(p, 'rb').read()).hexdigest()"
        " for p in ('plots/fig.png', 'table.csv')))\n",
    )
    png_sha, csv_sha = out.split()
    png = await api(base, "GET", kernel.kernel_id, "plots/fig.png")
    assert png.code == 200 and png.headers["Content-Type"] == "image/png"
    assert png.body.startswith(b"\x89PNG") and hashlib.sha256(png.body).hexdigest() == png_sha
    csv = await api(base, "GET", kernel.kernel_id, "table.csv")
    assert hashlib.sha256(csv.body).hexdigest() == csv_sha

    listing = await api(base, "GET", kernel.kernel_id)
    assert listing.code == 200
    by_path = {f["path"]: f for f in listing.json()["files"]}
    assert by_path["plots/fig.png"]["content_type"] == "image/png"
    assert by_path["table.csv"]["sha256"] == csv_sha
    assert by_path["table.csv"]["size"] == len(csv.body)


async def test_a_file_deleted_by_the_code_is_gone_from_the_store(gateway, base, kernel):
    assert (await api(base, "PUT", kernel.kernel_id, "tmp.txt", b"x")).code == 201
    await run(kernel, "import os; os.remove('tmp.txt')")
    store = gateway.workspace_sync.store
    await wait_for_store(store, kernel.kernel_id, lambda paths: "tmp.txt" not in paths)
    assert (await api(base, "GET", kernel.kernel_id, "tmp.txt")).code == 404


async def wait_for_store(store, kernel_id, predicate, timeout=30):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        paths = {e.path for e in await store.list(kernel_id)}
        if predicate(paths):
            return paths
        assert loop.time() < deadline, f"store never matched: {sorted(paths)}"
        await asyncio.sleep(0.05)


async def test_delete_through_the_api_removes_it_everywhere(base, kernel):
    await api(base, "PUT", kernel.kernel_id, "dir/a.txt", b"a")
    await api(base, "PUT", kernel.kernel_id, "dir/b.txt", b"b")
    assert (await api(base, "DELETE", kernel.kernel_id, "dir/a.txt")).code == 204
    assert await run(kernel, "import os; print(sorted(os.listdir('dir')))") == "['b.txt']\n"
    assert (await api(base, "DELETE", kernel.kernel_id, "dir")).code == 204  # a folder
    assert await run(kernel, "import os; print(os.path.exists('dir'))") == "False\n"
    r = await api(base, "DELETE", kernel.kernel_id, "dir")
    assert r.code == 404 and "no file" in r.json()["message"]


async def test_files_survive_the_loss_of_the_pod_and_a_restart(gateway, base, kernel):
    await run(kernel, "open('saved.txt', 'w').write('kept')")
    await api(base, "PUT", kernel.kernel_id, "uploaded.bin", os.urandom(1000))
    km = gateway.kernel_manager
    process = km.get_kernel(kernel.kernel_id).pod.meta["process"]
    os.killpg(os.getpgid(process.pid), signal.SIGKILL)
    k = km.get_kernel(kernel.kernel_id)
    await wait_for(lambda: not k.attached, 30, "pod loss noticed")

    check = "import os; print(open('saved.txt').read(), os.path.getsize('uploaded.bin'))"
    assert await run(kernel, check) == "kept 1000\n"

    r = await http(base, "POST", f"/api/kernels/{kernel.kernel_id}/restart", b"", token=TOKEN)
    assert r.code == 200, r.body
    assert await run(kernel, check) == "kept 1000\n"


async def test_a_deleted_kernels_files_are_removed(gateway, base):
    kernel_id = await start_kernel(base, token=TOKEN)
    await api(base, "PUT", kernel_id, "a.txt", b"a")
    store = gateway.workspace_sync.store
    assert [e.path for e in await store.list(kernel_id)] == ["a.txt"]
    assert (await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=TOKEN)).code == 204
    assert await store.list(kernel_id) == []
    assert (await api(base, "GET", kernel_id)).code == 404


async def test_quotas_answer_413_and_warn_in_the_cell(gateway, base, kernel):
    sync = gateway.workspace_sync
    sync.max_file_bytes, sync.max_kernel_bytes = 1000, 1500
    try:
        r = await api(base, "PUT", kernel.kernel_id, "big.bin", b"x" * 1001)
        assert r.code == 413 and "per-file limit of 1000 bytes" in r.json()["message"]
        assert (await api(base, "PUT", kernel.kernel_id, "a.bin", b"a" * 900)).code == 201
        r = await api(base, "PUT", kernel.kernel_id, "b.bin", b"b" * 900)
        assert r.code == 413 and "1.5 KiB limit" in r.json()["message"], r.body
        # Without Content-Length the store stops it midway: still 413, nothing kept.
        r = await chunked_put(base, kernel.kernel_id, "c.bin", [b"c" * 700] * 2)
        assert r.code == 413, r.body
        paths = {f["path"] for f in (await api(base, "GET", kernel.kernel_id)).json()["files"]}
        assert "b.bin" not in paths and "c.bin" not in paths

        r = await kernel.execute("open('made.bin', 'wb').write(b'm' * 5000)")
        assert r.content["status"] == "ok"
        await wait_for(lambda: "made.bin" in r.stderr, 30, "quota warning on stderr")
        assert "per-file limit of 1000 bytes" in r.stderr
    finally:
        sync.max_file_bytes = sync.max_kernel_bytes = None


async def chunked_put(base, kernel_id, path, parts):
    async def produce(write):
        for part in parts:
            await write(part)

    request = HTTPRequest(
        base + files_url(kernel_id, path),
        method="PUT",
        body_producer=produce,
        headers={"Authorization": f"token {TOKEN}"},
        request_timeout=60,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


@pytest.mark.parametrize(
    "path",
    ["..%2Fother%2Fx", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx", "a%5Cb", "bad%01name", "a//b", "./x"],
)
async def test_traversal_and_odd_names_are_refused(base, kernel, path):
    r = await api(base, "PUT", kernel.kernel_id, path, b"x")
    assert r.code == 400, (path, r.body)
    assert r.json()["message"]
    assert (await api(base, "GET", kernel.kernel_id, path)).code in (400, 404)


async def test_a_symlink_out_of_the_workspace_is_refused(gateway, base, kernel):
    await run(kernel, "import os; os.symlink('/tmp', 'out')")
    r = await api(base, "PUT", kernel.kernel_id, "out/planted.txt", b"x")
    assert r.code == 400 and "refused" in r.json()["message"], r.body
    store = gateway.workspace_sync.store
    assert "out/planted.txt" not in {e.path for e in await store.list(kernel.kernel_id)}
    assert (await api(base, "GET", kernel.kernel_id, "out")).code == 404  # links are not synced


async def test_auth_and_isolation_between_kernels(gateway, base, kernel):
    await api(base, "PUT", kernel.kernel_id, "mine.txt", b"secret")
    assert (await api(base, "GET", kernel.kernel_id, "mine.txt", token=None)).code in (401, 403)
    assert (await api(base, "PUT", kernel.kernel_id, "x", b"x", token="wrong")).code in (401, 403)
    other = await start_kernel(base, token=TOKEN)
    try:
        assert (await api(base, "GET", other, "mine.txt")).code == 404
        assert (await api(base, "GET", other, f"..%2F{kernel.kernel_id}%2Fmine.txt")).code == 400
        assert (await api(base, "GET", "no-such-kernel", "mine.txt")).code == 404
        # From inside its pod, the other kernel cannot reach this kernel's workspace either.
        workspace = gateway.kernel_manager.get_kernel(kernel.kernel_id).pod.meta["workspace"]
        client = await WSKernelClient.connect(base, other, token=TOKEN)
        try:
            r = await client.execute(
                f"import os; p = {str(workspace / 'mine.txt')!r}\n"
                "try:\n    print(open(p).read())\nexcept OSError as e:\n    print(type(e).__name__)"
            )
            assert r.stdout in ("FileNotFoundError\n", "PermissionError\n"), r.stdout + r.stderr
        finally:
            client.close()
    finally:
        await http(base, "DELETE", f"/api/kernels/{other}", token=TOKEN)


def peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


async def test_a_200_mb_file_streams_through_in_bounded_memory(base, kernel):
    """Upload and download 200 MB: this process (gateway and client) grows by < 64 MiB."""
    size, chunk = 200 * MiB, MiB
    block = os.urandom(chunk)
    sent = hashlib.sha256()

    async def produce(write):
        for i in range(size // chunk):
            piece = i.to_bytes(8, "big") + block[8:]
            sent.update(piece)
            await write(piece)

    client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 40)
    headers = {"Authorization": f"token {TOKEN}"}
    try:
        peak_rss_reset()
        before = rss_kib("VmRSS")
        up = await client.fetch(
            HTTPRequest(
                base + files_url(kernel.kernel_id, "big/blob.bin"),
                method="PUT",
                body_producer=produce,
                headers={**headers, "Content-Length": str(size)},
                request_timeout=300,
            ),
            raise_error=False,
        )
        assert up.code == 201, up.body
        assert json.loads(up.body)["warning"] is None
        got = hashlib.sha256()
        received = 0

        def on_chunk(data: bytes) -> None:
            nonlocal received
            received += len(data)
            got.update(data)

        down = await client.fetch(
            HTTPRequest(
                base + files_url(kernel.kernel_id, "big/blob.bin"),
                headers=headers,
                streaming_callback=on_chunk,
                request_timeout=300,
            ),
            raise_error=False,
        )
        growth = (rss_kib("VmHWM") - before) / 1024
    finally:
        client.close()
    assert down.code == 200
    assert received == size and got.hexdigest() == sent.hexdigest()
    out = await run(kernel, "import os; print(os.path.getsize('big/blob.bin'))")
    assert out == f"{size}\n"
    print(f"peak RSS growth while 2 x 200 MB streamed: {growth:.1f} MiB")
    assert growth < 64, f"the gateway's memory grew by {growth:.1f} MiB"
    await api(base, "DELETE", kernel.kernel_id, "big")


async def test_the_kernel_keeps_answering_while_a_file_sync_runs(gateway, base, kernel):
    """Issue 21: a slow post-cell sync (a big tree) no longer holds back the next cell; a
    cell that ends meanwhile gets one more sync once the running one is done."""
    sync = gateway.workspace_sync
    real_sync, gate, entered = sync.sync, asyncio.Event(), asyncio.Event()

    async def held_sync(kernel_id, runner):
        entered.set()
        await gate.wait()
        return await real_sync(kernel_id, runner)

    sync.sync = held_sync
    try:
        await run(kernel, "open('first.txt', 'w').write('1')")
        await asyncio.wait_for(entered.wait(), 30)
        # The sync of that cell is held: the kernel answers anyway, and a new change waits.
        assert await run(kernel, "print(1 + 1); open('second.txt', 'w').write('2')") == "2\n"
        assert not gate.is_set()
    finally:
        gate.set()
        sync.sync = real_sync
    paths = await wait_for_store(
        sync.store, kernel.kernel_id, lambda p: {"first.txt", "second.txt"} <= p
    )
    assert {"first.txt", "second.txt"} <= paths

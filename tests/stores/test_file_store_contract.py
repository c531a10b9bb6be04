"""Contract of FileStore, run against both implementations.

``s3``: moto's S3 server in a subprocess (a real S3 API over HTTP on
127.0.0.1); ``file``: a temp folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time
import tracemalloc
import uuid

import boto3
import pytest

from kcr_kernels.stores import (
    FileEntry,
    FileNotFound,
    FileStore,
    FileTooLarge,
    InvalidKernelId,
    InvalidPath,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    open_file_store,
)
from tests.services import S3_REGION, free_port

pytestmark = pytest.mark.timeout(90)
MiB = 1 << 20


@pytest.fixture(params=["s3", "file"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
async def store(store_kind, request, tmp_path) -> FileStore:
    if store_kind == "s3":
        s = open_file_store(
            request.getfixturevalue("s3_url"), **request.getfixturevalue("s3_options")
        )
    else:
        s = open_file_store(f"file://{tmp_path}/files")
    yield s
    await s.close()


def new_id() -> str:
    return str(uuid.uuid4())


async def chunks_of(*parts: bytes):
    for p in parts:
        yield p


async def generated(total: int, chunk: int = MiB, seed: int = 7, digest=None):
    """Yield ``total`` pseudo-random bytes in ``chunk``-sized pieces, never holding more."""
    rng = random.Random(seed)
    left = total
    while left:
        piece = rng.randbytes(min(chunk, left))
        if digest is not None:
            digest.update(piece)
        left -= len(piece)
        yield piece


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- round trips -----------------------------------------------------------------
async def test_write_read_list_round_trip(store):
    k = new_id()
    assert await store.list(k) == []
    before = time.time()
    entry = await store.write(k, "data/table.csv", chunks_of(b"a,b\n", b"1,2\n"))
    assert entry == FileEntry("data/table.csv", 8, entry.mtime, sha(b"a,b\n1,2\n"))
    assert entry.mtime >= before - 2
    await store.write_bytes(k, "notebook.ipynb", b"{}", mtime=1_600_000_000.5)
    await store.write(k, "empty", chunks_of())
    await store.write_bytes(k, "deep/er/still/x.bin", bytes(range(256)))

    listed = await store.list(k)
    assert [e.path for e in listed] == [
        "data/table.csv",
        "deep/er/still/x.bin",
        "empty",
        "notebook.ipynb",
    ]
    by_path = {e.path: e for e in listed}
    assert by_path["data/table.csv"] == entry
    assert by_path["notebook.ipynb"].mtime == pytest.approx(1_600_000_000.5, abs=1e-3)
    assert by_path["empty"] == FileEntry("empty", 0, by_path["empty"].mtime, sha(b""))
    assert by_path["deep/er/still/x.bin"].sha256 == sha(bytes(range(256)))

    assert await store.read_bytes(k, "data/table.csv") == b"a,b\n1,2\n"
    assert await store.read_bytes(k, "empty") == b""
    assert await store.usage(k) == 8 + 2 + 0 + 256


async def test_overwrite_replaces_content(store):
    k = new_id()
    await store.write_bytes(k, "f.txt", b"old content")
    entry = await store.write_bytes(k, "f.txt", b"new")
    assert await store.read_bytes(k, "f.txt") == b"new"
    assert await store.list(k) == [entry]
    assert entry.sha256 == sha(b"new")


async def test_read_in_chunks_of_requested_size(store):
    k = new_id()
    await store.write_bytes(k, "f", b"0123456789" * 10)
    got = [c async for c in store.read(k, "f", chunk_size=7)]
    assert b"".join(got) == b"0123456789" * 10
    assert all(1 <= len(c) <= 7 for c in got)


async def test_missing_file_is_file_not_found(store):
    k = new_id()
    with pytest.raises(FileNotFound, match="no such file"):
        await store.read_bytes(k, "nope.txt")
    await store.write_bytes(k, "dir/f", b"x")
    with pytest.raises(FileNotFound):
        await store.read_bytes(k, "dir")  # a folder is not a file


async def test_delete_delete_all_and_usage(store):
    k, other = new_id(), new_id()
    await store.write_bytes(k, "a/one", b"1")
    await store.write_bytes(k, "a/two", b"22")
    await store.write_bytes(k, "three", b"333")
    await store.write_bytes(other, "keep", b"kept")
    await store.delete(k, "a/one")
    await store.delete(k, "a/one")  # missing: not an error
    assert [e.path for e in await store.list(k)] == ["a/two", "three"]
    assert await store.usage(k) == 5

    await store.delete_all(k)
    assert await store.list(k) == []
    assert await store.usage(k) == 0
    await store.delete_all(k)  # idempotent
    assert await store.read_bytes(other, "keep") == b"kept"


# -- limits and failures ------------------------------------------------------------
async def test_over_max_bytes_keeps_nothing(store):
    k = new_id()
    with pytest.raises(FileTooLarge) as info:
        await store.write(k, "big", chunks_of(b"x" * 600, b"y" * 600), max_bytes=1000)
    assert info.value.limit == 1000 and "max_bytes" in str(info.value)
    assert await store.list(k) == []

    await store.write_bytes(k, "big", b"previous")
    with pytest.raises(FileTooLarge):
        await store.write(k, "big", chunks_of(b"z" * 1001), max_bytes=1000)
    assert await store.read_bytes(k, "big") == b"previous"

    exact = await store.write(k, "exact", chunks_of(b"e" * 1000), max_bytes=1000)
    assert exact.size == 1000


async def test_over_max_bytes_after_several_parts_keeps_nothing(store, store_kind, request):
    """Stopped mid-way through a multipart upload: no object, no dangling upload."""
    k = new_id()
    with pytest.raises(FileTooLarge):
        await store.write(k, "huge.bin", generated(20 * MiB), max_bytes=18 * MiB)
    assert await store.list(k) == []
    if store_kind == "s3":
        assert _leftover_uploads(request) == ([], [])


def _leftover_uploads(request) -> tuple[list, list]:
    options = request.getfixturevalue("s3_options")
    client = boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        region_name=S3_REGION,
        aws_access_key_id=options["access_key_id"],
        aws_secret_access_key=options["secret_access_key"],
    )
    bucket = request.getfixturevalue("s3_url").split("/")[2]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    temps = client.list_objects_v2(Bucket=bucket, Prefix="files/.kcr-uploads/").get("Contents", [])
    return uploads, temps


async def test_failing_source_keeps_nothing(store):
    k = new_id()
    await store.write_bytes(k, "f", b"previous")

    async def broken():
        yield b"partial data"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write(k, "f", broken())
    assert await store.read_bytes(k, "f") == b"previous"
    assert [e.path for e in await store.list(k)] == ["f"]


async def test_file_and_folder_cannot_share_a_name(store):
    k = new_id()
    await store.write_bytes(k, "a/b", b"in folder a")
    with pytest.raises(InvalidPath, match="cannot share a name"):
        await store.write_bytes(k, "a", b"file a")
    with pytest.raises(InvalidPath, match="cannot share a name"):
        await store.write_bytes(k, "a/b/c", b"under file a/b")
    await store.delete(k, "a/b")
    await store.write_bytes(k, "a", b"now a file")
    assert [e.path for e in await store.list(k)] == ["a"]


# -- large files -----------------------------------------------------------------
async def test_large_file_streams_without_holding_it_in_memory(store):
    k = new_id()
    size = 64 * MiB
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        entry = await store.write(k, "big/data.bin", generated(size, digest=expected))
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        n = 0
        async for chunk in store.read(k, "big/data.bin"):
            assert len(chunk) <= MiB
            got.update(chunk)
            n += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size == size and entry.sha256 == expected.hexdigest()
    assert n == size and got.hexdigest() == expected.hexdigest()
    assert await store.list(k) == [entry]
    # a 64 MiB file moved with at most ~two 8 MiB parts / a few chunks in memory at a time
    assert write_peak < 24 * MiB, f"write peaked at {write_peak / MiB:.1f} MiB"
    assert read_peak < 16 * MiB, f"read peaked at {read_peak / MiB:.1f} MiB"


# -- paths and kernel ids ------------------------------------------------------------
BAD_PATHS = [
    "",
    "/etc/passwd",
    "../other-kernel/f",
    "a/../../b",
    "a/./b",
    ".",
    "..",
    "a//b",
    "a/",
    "a\\b",
    "nul\x00byte",
    "new\nline",
    "del\x7f",
    "x" * 256,
    "/".join(["d"] * 500),
]


@pytest.mark.parametrize("bad", BAD_PATHS)
async def test_bad_paths_are_refused_everywhere(store, bad):
    k = new_id()
    with pytest.raises(InvalidPath, match="invalid path"):
        await store.write_bytes(k, bad, b"x")
    with pytest.raises(InvalidPath):
        await store.read_bytes(k, bad)
    with pytest.raises(InvalidPath):
        await store.delete(k, bad)
    assert await store.list(k) == []


async def test_unusual_but_valid_paths_work(store):
    k = new_id()
    paths = [".bashrc", "a..b", "with space.txt", "ünïcødé/名前.txt", "-dash", "x" * 255]
    for p in paths:
        await store.write_bytes(k, p, p.encode())
    assert sorted(e.path for e in await store.list(k)) == sorted(paths)
    for p in paths:
        assert await store.read_bytes(k, p) == p.encode()


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".kcr-uploads", "x" * 129])
async def test_bad_kernel_ids_are_refused(store, bad):
    with pytest.raises(InvalidKernelId):
        await store.list(bad)
    with pytest.raises(InvalidKernelId):
        await store.write_bytes(bad, "f", b"x")


async def test_kernels_cannot_see_each_others_files(store):
    k = new_id()
    k_longer = k + "0"  # one id a prefix of the other
    await store.write_bytes(k, "mine", b"k")
    await store.write_bytes(k_longer, "theirs", b"k0")
    assert [e.path for e in await store.list(k)] == ["mine"]
    assert [e.path for e in await store.list(k_longer)] == ["theirs"]
    with pytest.raises(FileNotFound):
        await store.read_bytes(k, "theirs")
    await store.delete_all(k)
    assert [e.path for e in await store.list(k_longer)] == ["theirs"]


def test_bad_urls_are_refused():
    for url in ["ftp://x/y", "s3://", "file://relative/path", "nonsense"]:
        with pytest.raises(StoreConfigError, match="open_file_store"):
            open_file_store(url)


# -- S3 specifics ------------------------------------------------------------------
async def test_s3_missing_bucket_is_reported_or_created(s3_options):
    bucket = f"kcr-new-{uuid.uuid4().hex[:12]}"
    plain = open_file_store(f"s3://{bucket}/p", **s3_options)
    with pytest.raises(StoreError, match=f"bucket '{bucket}' does not exist"):
        await plain.list("k1")
    await plain.close()

    creating = open_file_store(f"s3://{bucket}/p", create_bucket=True, **s3_options)
    await creating.write_bytes("k1", "f", b"hello")
    assert await creating.read_bytes("k1", "f") == b"hello"
    await creating.close()


async def test_s3_unreachable_is_unavailable_quickly(s3_options):
    options = dict(s3_options, endpoint_url=f"http://127.0.0.1:{free_port()}")
    store = open_file_store("s3://kcr-test/files", **options)
    with pytest.raises(StoreUnavailable, match="S3 unreachable"):
        await asyncio.wait_for(store.list("k1"), 30)
    await store.close()


async def test_s3_store_without_prefix(s3_url, s3_options):
    store = open_file_store(s3_url.rsplit("/", 1)[0], **s3_options)  # s3://bucket
    k = new_id()
    await store.write_bytes(k, "f", b"top")
    assert [e.path for e in await store.list(k)] == ["f"]
    await store.delete_all(k)
    await store.close()


async def test_s3_unresponsive_endpoint_is_unavailable_not_a_hang(s3_options):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        options = dict(s3_options, endpoint_url=f"http://127.0.0.1:{port}")
        store = open_file_store(
            "s3://kcr-test/files", connect_timeout=0.5, read_timeout=0.5, **options
        )
        with pytest.raises(StoreUnavailable, match="S3 unreachable"):
            await asyncio.wait_for(store.read_bytes("k1", "f"), 30)
        await store.close()


async def test_ping_passes_on_a_working_store(store):
    await store.ping()


async def test_s3_ping_tells_unreachable_from_not_s3(s3_options):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    down = open_file_store(
        "s3://kcr-test/files",
        **dict(s3_options, endpoint_url=f"http://127.0.0.1:{free_port()}"),
        connect_timeout=0.5,
    )
    with pytest.raises(StoreUnavailable):
        await down.ping()
    await down.close()

    class Page(BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            body = b"<html><body>It works!</body></html>"
            self.send_response(self.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    class Missing(Page):
        status = 404

    for handler, text in ((Page, "not as an S3 API"), (Missing, "HTTP 404 without an S3 error")):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        store = open_file_store("s3://kcr-test/files", **dict(s3_options, endpoint_url=endpoint))
        try:
            with pytest.raises(StoreConfigError, match=text) as caught:
                await store.ping()
            assert endpoint in str(caught.value)
        finally:
            await store.close()
            server.shutdown()

    missing = open_file_store(f"s3://kcr-nope-{uuid.uuid4().hex[:8]}/p", **s3_options)
    with pytest.raises(StoreConfigError, match="does not exist"):
        await missing.ping()
    await missing.close()

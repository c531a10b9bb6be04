"""Issue 12: kernel code that swaps workspace paths between files, directories and symlinks
to host paths, while the files API, the post-cell sync and a restore run, never reads,
creates or removes a host file.

A real sandboxed kernel (local backend, bubblewrap, the real runner) runs the swapping loop
in a thread for a bounded number of swaps; the test drives a bounded number of GET, PUT,
DELETE and list calls, syncs and restores at the same time. A canary folder outside the
workspace (the symlinks' target) is compared before and after: names, contents, modes,
owners and mtimes. The canary is either root-only (0700 folder, 0600 secret: the path check
and the file threads' uid both stand in the way) or owned by the sandbox's host uid (only
the race-free path resolution stands in the way).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from kcr_kernels.runner_client import RunnerClient
from kcr_kernels.stores import open_file_store
from kcr_kernels.workspace_sync import RestoreFailed, WorkspaceSync
from tests.sandbox.sandbox_helpers import needs_bwrap, run_in_pod

pytestmark = [needs_bwrap, pytest.mark.timeout(300)]

SECRET = b"HOST-SECRET-" + uuid.uuid4().hex.encode()
#: Upper bound on the kernel's swaps (the loop also stops when the test is done).
MAX_SWAPS = 400_000
ROUNDS = 60  # rounds of concurrent API calls; each round issues every kind of call

SWAPPER = """
import ctypes, os, platform, threading
CANARY = {canary!r}
RENAME_EXCHANGE = 2
SYS_RENAMEAT2 = {{"x86_64": 316, "aarch64": 276}}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("d", exist_ok=True)
open("d/secret", "w").write("decoy")
open("victim.txt", "w").write("decoy")
os.symlink(CANARY, ".d-link")
os.symlink(CANARY + "/secret", ".victim-link")
swaps = [0, 0]

def swap_loop(slot, a, b):
    # Atomically exchange a and b (renameat2 RENAME_EXCHANGE): the name is always there,
    # a file or directory one moment and a symlink to the canary the next.
    for i in range({max_swaps}):
        if i % 256 == 0 and os.path.exists("stop"):
            break
        libc.syscall(SYS_RENAMEAT2, -100, a.encode(), -100, b.encode(), RENAME_EXCHANGE)
        swaps[slot] = i + 1

swappers = [
    threading.Thread(target=swap_loop, args=(0, "victim.txt", ".victim-link"), daemon=True),
    threading.Thread(target=swap_loop, args=(1, "d", ".d-link"), daemon=True),
]
for t in swappers:
    t.start()
"""

DONE = "[t.join(60) for t in swappers]; print(min(swaps), any(t.is_alive() for t in swappers))"


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (and itself): type, mode, owner, size, mtime, contents."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            info = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None
            key = os.path.relpath(path, folder)
            out[key] = (info.st_mode, info.st_uid, info.st_size, info.st_mtime_ns, data)
    return out


def make_canary(tmp_path: Path, owner: int) -> Path:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret").write_bytes(SECRET)
    (canary / "keep").mkdir()
    (canary / "keep" / "file").write_bytes(SECRET)
    for path, mode in [(canary, 0o700), (canary / "secret", 0o600), (canary / "keep", 0o700)]:
        os.chown(path, owner, owner)
        path.chmod(mode)
    os.chown(canary / "keep" / "file", owner, owner)
    return canary


@pytest.mark.parametrize("canary_owner", ["root-only", "sandbox-uid"])
async def test_swapping_symlinks_never_reach_host_files(make_backend, tmp_path, canary_owner):
    backend = await make_backend()
    if canary_owner == "sandbox-uid" and backend.host_uid is None:
        pytest.skip("the sandbox maps to the gateway's own uid (not running as root)")
    if canary_owner == "root-only" and os.geteuid() != 0:
        pytest.skip("a root-owned canary needs root")
    pod = await backend.wait_ready(await backend.create("python"), 30)
    owner = backend.pod_uid(pod) if canary_owner == "sandbox-uid" else 0
    canary = make_canary(tmp_path, owner)
    before = snapshot(canary)

    workspace = backend.workspace(pod)
    client = RunnerClient(pod.url, pod.token)
    store = open_file_store(f"file://{tmp_path}/files")
    sync = WorkspaceSync(store, max_file_bytes=None, max_kernel_bytes=None)
    kernel_id = str(uuid.uuid4())
    await store.write_bytes(kernel_id, "victim.txt", b"restored")
    await store.write_bytes(kernel_id, "d/restored.txt", b"restored")
    http = AsyncHTTPClient()
    statuses: dict[str, list[int]] = {}

    async def call(kind: str, method: str, path: str, body: bytes | None = None) -> bytes:
        request = HTTPRequest(
            f"{pod.url}{path}",
            method=method,
            body=body,
            headers={"Authorization": f"Bearer {pod.token}"},
            request_timeout=30,
        )
        response = await http.fetch(request, raise_error=False)
        statuses.setdefault(kind, []).append(response.code)
        return response.body or b""

    read_bodies: list[bytes] = []
    listings: list[list[dict]] = []

    async def one_round(i: int) -> None:
        results = await asyncio.gather(
            call("get", "GET", "/files/victim.txt"),
            call("get", "GET", "/files/d/secret"),
            call("put", "PUT", "/files/victim.txt", b"planted"),
            call("put", "PUT", f"/files/d/planted-{i}", b"planted"),
            call("delete", "DELETE", "/files/d/secret"),
            call("delete", "DELETE", "/files/d/keep/file"),
            call("list", "GET", "/files"),
        )
        read_bodies.extend(results[:2])
        listings.append(json.loads(results[6])["files"])
        try:
            await sync.sync(kernel_id, client)
        except Exception as exc:  # a sync may lose a race (file gone); never a host file
            statuses.setdefault("sync_error", []).append(type(exc).__name__)
        if i % 5 == 0:
            try:
                await sync.restore(kernel_id, client)
            except RestoreFailed:
                statuses.setdefault("restore_failed", []).append(i)

    try:
        started = await run_in_pod(pod, SWAPPER.format(canary=str(canary), max_swaps=MAX_SWAPS))
        assert started["rc"] == 0, started
        for i in range(ROUNDS):
            await one_round(i)
        (workspace / "stop").write_bytes(b"")
        done = await run_in_pod(pod, DONE)
        assert done["rc"] == 0, done
        swaps, alive = done["stdout"].split()
    finally:
        client.close()
        await store.close()
        await backend.delete(pod)

    # Nothing of the host was read, created, changed or removed.
    assert snapshot(canary) == before
    assert all(SECRET not in body for body in read_bodies)
    secret_sha = hashlib.sha256(SECRET).hexdigest()
    for listing in listings:
        for entry in listing:
            assert entry.get("sha256") != secret_sha, entry
            if entry.get("type") == "symlink":
                assert "sha256" not in entry
    stored = [await store_bytes(tmp_path, kernel_id)]
    assert all(SECRET not in blob for blob in stored)

    # The race was real: the loop ran while the calls were made, and the API saw both sides.
    assert alive == "False" and int(swaps) > 100, done
    assert 200 in statuses["get"], statuses
    assert 403 in statuses["get"], statuses  # a symlink in the way: refused, not followed
    assert any(link for listing in listings for link in listing if link.get("type") == "symlink")
    # Every answer was a clear one, never a server error.
    for kind in ("get", "put", "delete", "list"):
        assert all(code < 500 for code in statuses[kind]), (kind, statuses[kind])


async def store_bytes(tmp_path: Path, kernel_id: str) -> bytes:
    """Every byte the file store holds for the kernel, concatenated."""
    blob = b""
    for path in sorted((tmp_path / "files").rglob("*")):
        if path.is_file():
            blob += path.read_bytes()
    return blob


async def test_files_the_api_writes_belong_to_the_sandbox_user(make_backend, tmp_path):
    """Uploads and restored files are owned by the sandbox's host uid, so kernel code can
    change them; the runner's file threads cannot read what that uid cannot."""
    backend = await make_backend()
    if backend.host_uid is None:
        pytest.skip("the sandbox maps to the gateway's own uid (not running as root)")
    pod = await backend.wait_ready(await backend.create("python"), 30)
    other = await backend.wait_ready(await backend.create("python"), 30)
    uid = backend.pod_uid(pod)
    # Each live pod has its own host uid: pods cannot touch each other's files.
    assert uid is not None and backend.pod_uid(other) not in (None, uid)
    await backend.delete(other)
    workspace = backend.workspace(pod)
    client = RunnerClient(pod.url, pod.token)
    store = open_file_store(f"file://{tmp_path}/files")
    sync = WorkspaceSync(store, max_file_bytes=None, max_kernel_bytes=None)
    kernel_id = str(uuid.uuid4())
    await store.write_bytes(kernel_id, "restored/deep/r.txt", b"restored")
    try:
        await sync.restore(kernel_id, client)
        assert (await client.call("PUT", "/files/up/loaded.txt", body=b"uploaded")).code == 204
        for rel in ["restored", "restored/deep", "restored/deep/r.txt", "up", "up/loaded.txt"]:
            info = os.lstat(workspace / rel)
            assert (info.st_uid, info.st_gid) == (uid, uid), rel
        changed = await run_in_pod(
            pod,
            "open('up/loaded.txt', 'a').write('+kernel'); os_ = __import__('os');"
            "os_.remove('restored/deep/r.txt'); print(open('up/loaded.txt').read())",
        )
        assert changed == {"rc": 0, "stdout": "uploaded+kernel\n", "stderr": ""}
        # A root-only file planted in the workspace by the host: the runner's file threads
        # (the sandbox's uid) may not read it, and say so.
        (workspace / "root-only.txt").write_bytes(b"root")
        (workspace / "root-only.txt").chmod(0o600)
        http = AsyncHTTPClient()
        response = await http.fetch(
            HTTPRequest(
                f"{pod.url}/files/root-only.txt",
                headers={"Authorization": f"Bearer {pod.token}"},
            ),
            raise_error=False,
        )
        assert response.code == 403
        assert json.loads(response.body)["reason"] == "permission_denied"
    finally:
        client.close()
        await store.close()
        await backend.delete(pod)

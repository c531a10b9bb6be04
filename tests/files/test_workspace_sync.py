"""WorkspaceSync against real runner processes and both real file stores."""

from __future__ import annotations

import hashlib
import os

import pytest

from kcr_kernels.stores import open_file_store
from kcr_kernels.workspace_sync import QuotaExceeded, RestoreFailed, WorkspaceSync


def make_sync(store, max_file_bytes=None, max_kernel_bytes=None) -> WorkspaceSync:
    return WorkspaceSync(store, max_file_bytes=max_file_bytes, max_kernel_bytes=max_kernel_bytes)


def write(pod, path: str, data: bytes) -> None:
    full = pod.workspace / path
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_bytes(data)


async def stored(store, kernel_id) -> dict[str, bytes]:
    return {e.path: await store.read_bytes(kernel_id, e.path) for e in await store.list(kernel_id)}


async def test_restore_puts_every_stored_file_into_a_fresh_pod(store, new_pod, kernel_id):
    await store.write_bytes(kernel_id, "data/input.csv", b"a,b\n1,2\n")
    await store.write_bytes(kernel_id, "notes.txt", b"hello")
    pod = new_pod()
    sync = make_sync(store)

    assert await sync.restore(kernel_id, pod.client) == 2

    assert (pod.workspace / "data/input.csv").read_bytes() == b"a,b\n1,2\n"
    assert (pod.workspace / "notes.txt").read_bytes() == b"hello"
    result = await sync.sync(kernel_id, pod.client)  # restored files are not pushed back
    assert (result.uploaded, result.deleted, result.warning) == ([], [], None)


async def test_sync_moves_only_created_changed_and_deleted_files(store, new_pod, kernel_id):
    pod = new_pod()
    sync = make_sync(store)
    await sync.restore(kernel_id, pod.client)
    write(pod, "keep.txt", b"same")
    write(pod, "change.txt", b"v1")
    write(pod, "gone.txt", b"bye")
    first = await sync.sync(kernel_id, pod.client)
    assert sorted(first.uploaded) == ["change.txt", "gone.txt", "keep.txt"]

    write(pod, "change.txt", b"v2")
    write(pod, "sub/dir/new.bin", bytes(range(256)))
    os.utime(pod.workspace / "keep.txt")  # touched, content unchanged: nothing moves
    (pod.workspace / "gone.txt").unlink()
    second = await sync.sync(kernel_id, pod.client)

    assert sorted(second.uploaded) == ["change.txt", "sub/dir/new.bin"]
    assert second.deleted == ["gone.txt"]
    assert await stored(store, kernel_id) == {
        "change.txt": b"v2",
        "keep.txt": b"same",
        "sub/dir/new.bin": bytes(range(256)),
    }
    third = await sync.sync(kernel_id, pod.client)
    assert (third.uploaded, third.deleted) == ([], [])


async def test_files_come_back_on_a_new_pod_after_the_old_one_dies(store, new_pod, kernel_id):
    sync = make_sync(store)
    old = new_pod()
    await sync.restore(kernel_id, old.client)
    payload = os.urandom(3 << 20)  # several chunks
    write(old, "model/weights.bin", payload)
    write(old, "out.csv", b"x,y\n")
    await sync.sync(kernel_id, old.client)
    old.stop()

    new = new_pod()
    assert await sync.restore(kernel_id, new.client) == 2
    assert (new.workspace / "model/weights.bin").read_bytes() == payload
    assert (new.workspace / "out.csv").read_bytes() == b"x,y\n"


async def test_a_new_gateway_without_history_compares_with_the_store(store, new_pod, kernel_id):
    """No restore in this process (e.g. sync on a pod restored by a gateway that restarted):
    unchanged files do not move and nothing missing from the pod is deleted."""
    pod = new_pod()
    await make_sync(store).restore(kernel_id, pod.client)
    write(pod, "a.txt", b"a")
    await make_sync(store).sync(kernel_id, pod.client)
    await store.write_bytes(kernel_id, "only-in-store.txt", b"s")

    fresh = make_sync(store)
    result = await fresh.sync(kernel_id, pod.client)
    assert (result.uploaded, result.deleted) == ([], [])
    assert set(await stored(store, kernel_id)) == {"a.txt", "only-in-store.txt"}


async def test_per_file_limit_skips_the_file_and_warns_once(store, new_pod, kernel_id):
    pod = new_pod()
    sync = make_sync(store, max_file_bytes=1000)
    await sync.restore(kernel_id, pod.client)
    write(pod, "small.txt", b"s" * 10)
    write(pod, "big.bin", b"b" * 1001)

    result = await sync.sync(kernel_id, pod.client)
    assert result.uploaded == ["small.txt"]
    assert [(s.path, s.reason) for s in result.skipped] == [("big.bin", "file_too_large")]
    assert "big.bin" in result.warning and "per-file limit" in result.warning
    assert set(await stored(store, kernel_id)) == {"small.txt"}
    assert (await sync.sync(kernel_id, pod.client)).warning is None  # not after every cell

    write(pod, "big.bin", b"c" * 2000)  # a new version is reported again
    assert [s.path for s in (await sync.sync(kernel_id, pod.client)).skipped] == ["big.bin"]
    write(pod, "big.bin", b"fits")
    again = await sync.sync(kernel_id, pod.client)
    assert again.uploaded == ["big.bin"] and again.warning is None


async def test_kernel_quota_counts_every_file(store, new_pod, kernel_id):
    pod = new_pod()
    sync = make_sync(store, max_kernel_bytes=100)
    await sync.restore(kernel_id, pod.client)
    write(pod, "a.bin", b"a" * 60)
    assert (await sync.sync(kernel_id, pod.client)).uploaded == ["a.bin"]
    write(pod, "b.bin", b"b" * 60)
    result = await sync.sync(kernel_id, pod.client)
    assert [(s.path, s.reason) for s in result.skipped] == [("b.bin", "kernel_quota")]
    assert "limit of 100 bytes" in result.warning

    (pod.workspace / "a.bin").unlink()  # room again
    result = await sync.sync(kernel_id, pod.client)
    assert result.deleted == ["a.bin"] and result.uploaded == ["b.bin"]
    assert await store.usage(kernel_id) == 60


async def test_symlinks_and_odd_names_never_reach_the_store(store, new_pod, kernel_id, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    pod = new_pod()
    sync = make_sync(store)
    await sync.restore(kernel_id, pod.client)
    os.symlink(secret, pod.workspace / "escape.txt")
    os.symlink("/etc", pod.workspace / "etc")
    write(pod, "back\\slash.txt", b"x")
    write(pod, "ok.txt", b"ok")

    result = await sync.sync(kernel_id, pod.client)
    assert result.uploaded == ["ok.txt"]
    assert [(s.path, s.reason) for s in result.skipped] == [("back\\slash.txt", "bad_name")]
    assert set(await stored(store, kernel_id)) == {"ok.txt"}


async def test_store_outage_is_reported_not_raised(new_pod, kernel_id, s3_options):
    dead = open_file_store(
        "s3://kcr-test/files",
        **{**s3_options, "endpoint_url": "http://127.0.0.1:9"},
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    pod = new_pod()
    write(pod, "a.txt", b"a")
    sync = make_sync(dead)

    write(pod, "b.txt", b"b")
    result = await sync.sync(kernel_id, pod.client)
    assert result.error and "127.0.0.1:9" in result.error
    assert "could not be saved" in result.warning
    # Every change the store did not get is named, not only the first failed write.
    assert result.store_failed and result.unsaved == ["a.txt", "b.txt"]
    assert sync.unsaved(kernel_id) == ["a.txt", "b.txt"]
    with pytest.raises(RestoreFailed, match="could not be listed"):
        await sync.restore(kernel_id, pod.client)
    await dead.close()


async def test_a_gone_pod_is_reported_not_raised(store, new_pod, kernel_id):
    pod = new_pod()
    sync = make_sync(store)
    await sync.restore(kernel_id, pod.client)
    pod.stop()
    result = await sync.sync(kernel_id, pod.client)
    assert result.error and "could not be listed" in result.error
    await store.write_bytes(kernel_id, "a.txt", b"a")
    with pytest.raises(RestoreFailed, match="could not be restored"):
        await sync.restore(kernel_id, pod.client)


async def test_a_file_the_pod_refuses_stays_in_the_store(store, new_pod, kernel_id):
    """A stored file larger than the pod accepts is kept (never deleted by a later sync)."""
    await store.write_bytes(kernel_id, "huge.bin", b"h" * 5000)
    await store.write_bytes(kernel_id, "fine.txt", b"fine")
    pod = new_pod("--max-file-bytes", "4096")
    sync = make_sync(store)

    assert await sync.restore(kernel_id, pod.client) == 1
    result = await sync.sync(kernel_id, pod.client)
    assert result.deleted == []
    assert "huge.bin" in result.warning and "could not be put into" in result.warning
    assert set(await stored(store, kernel_id)) == {"huge.bin", "fine.txt"}


async def test_forget_removes_the_kernels_files_only(store, new_pod, kernel_id):
    other = kernel_id + "-other"
    await store.write_bytes(kernel_id, "a.txt", b"a")
    await store.write_bytes(other, "a.txt", b"other")
    sync = make_sync(store)
    await sync.forget(kernel_id)
    assert await store.list(kernel_id) == []
    assert await store.read_bytes(other, "a.txt") == b"other"


async def test_a_hundred_small_files(store, new_pod, kernel_id):
    pod = new_pod()
    sync = make_sync(store)
    await sync.restore(kernel_id, pod.client)
    files = {f"many/f{i:03}.txt": f"file {i}".encode() for i in range(100)}
    for path, data in files.items():
        write(pod, path, data)
    result = await sync.sync(kernel_id, pod.client)
    assert len(result.uploaded) == 100 and result.error is None
    got = await stored(store, kernel_id)
    assert {p: hashlib.sha256(d).hexdigest() for p, d in got.items()} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()
    }


async def test_file_count_limit_keeps_new_files_out_and_says_so_in_one_line(
    store, new_pod, kernel_id
):
    pod = new_pod()
    sync = WorkspaceSync(store, max_file_bytes=None, max_kernel_bytes=None, max_kernel_files=3)
    await sync.restore(kernel_id, pod.client)
    for i in range(6):
        write(pod, f"f{i}.txt", b"x")
    result = await sync.sync(kernel_id, pod.client)
    assert sorted(result.uploaded) == ["f0.txt", "f1.txt", "f2.txt"]
    assert [(s.path, s.reason) for s in result.skipped] == [
        (f"f{i}.txt", "file_count") for i in (3, 4, 5)
    ]
    assert result.warning == (
        "3 new file(s) were not saved (f3.txt, f4.txt, f5.txt): the kernel already has 3 "
        "files, its limit; they stay in this pod only and are lost when the pod stops"
    )
    assert (await sync.sync(kernel_id, pod.client)).warning is None  # said once
    with pytest.raises(QuotaExceeded, match="limit of 3"):
        await sync.check_upload(kernel_id, "new.txt", 1)
    assert await sync.check_upload(kernel_id, "f0.txt", 1) is None  # replacing is fine

    (pod.workspace / "f0.txt").unlink()  # room for one more
    result = await sync.sync(kernel_id, pod.client)
    assert result.deleted == ["f0.txt"] and result.uploaded == ["f3.txt"]
    assert set(await stored(store, kernel_id)) == {"f1.txt", "f2.txt", "f3.txt"}

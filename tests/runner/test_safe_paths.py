"""kcr_runner.safe_paths: resolution by directory fd that never follows a symlink."""

from __future__ import annotations

import os
import threading

import pytest
from kcr_runner import safe_paths
from kcr_runner.file_identity import FileOps, current_fs_ids
from kcr_runner.files import Workspace
from kcr_runner.safe_paths import PathEscapes, PathRefused, Root


@pytest.fixture(params=["openat2", "walk"])
def root(request, tmp_path, monkeypatch):
    """A Root over ``tmp_path/ws``, once with openat2 and once with the per-component walk."""
    if request.param == "walk":
        monkeypatch.setattr(safe_paths, "_openat2_works", False)
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    with Root(str(ws)) as r:
        yield r


def outside(root: Root) -> str:
    return os.path.join(os.path.dirname(root.path), "outside")


def test_malformed_paths_are_refused(root):
    for bad in ["", "/etc/passwd", "a/../../x", "..", "a\x00b", ".", "./"]:
        with pytest.raises(PathRefused):
            root.open_read(bad)


def test_symlink_in_a_middle_component_is_refused(root):
    os.symlink(outside(root), os.path.join(root.path, "d"))
    with pytest.raises(PathEscapes):
        root.open_read("d/secret")
    with pytest.raises(PathEscapes):
        root.write("d/planted", b"x")
    with pytest.raises(PathEscapes):
        root.delete("d/secret")
    assert os.listdir(outside(root)) == ["secret"]


def test_symlink_inside_the_workspace_is_refused_too(root):
    os.mkdir(os.path.join(root.path, "real"))
    root.write("real/f", b"inside")
    os.symlink("real", os.path.join(root.path, "alias"))
    os.symlink("real/f", os.path.join(root.path, "alias-f"))
    for path in ["alias/f", "alias-f"]:
        with pytest.raises(PathEscapes):
            root.open_read(path)


def test_final_component_symlink_dangling_and_to_root(root):
    os.symlink(os.path.join(outside(root), "secret"), os.path.join(root.path, "f"))
    os.symlink("/nonexistent/target", os.path.join(root.path, "dangling"))
    os.symlink("/", os.path.join(root.path, "slash"))
    for path in ["f", "dangling", "slash", "slash/etc/passwd"]:
        with pytest.raises(PathEscapes):
            root.open_read(path)
    with pytest.raises(PathEscapes):
        root.mkdir("slash/tmp/x")


def test_write_to_a_final_symlink_is_refused_and_a_late_swap_is_replaced(root):
    secret = os.path.join(outside(root), "secret")
    os.symlink(secret, os.path.join(root.path, "f"))
    with pytest.raises(PathEscapes):
        root.write("f", b"new")
    os.unlink(os.path.join(root.path, "f"))
    upload = root.begin_write("f")
    os.symlink(secret, os.path.join(root.path, "f"))  # swapped in after the check
    upload.file.write(b"new")
    upload.commit()
    assert not os.path.islink(os.path.join(root.path, "f"))
    assert open(os.path.join(root.path, "f"), "rb").read() == b"new"
    assert open(secret).read() == "host secret"


def test_delete_of_a_symlink_removes_the_link_not_the_target(root):
    os.symlink(outside(root), os.path.join(root.path, "d"))
    os.symlink(os.path.join(outside(root), "secret"), os.path.join(root.path, "f"))
    root.delete("d")
    root.delete("f")
    assert os.listdir(root.path) == []
    assert os.listdir(outside(root)) == ["secret"]


def test_recursive_delete_never_follows_links(root):
    root.write("tree/a/b/file", b"1")
    os.symlink(outside(root), os.path.join(root.path, "tree", "a", "out"))
    root.delete("tree")
    assert os.listdir(root.path) == []
    assert open(os.path.join(outside(root), "secret")).read() == "host secret"


def test_directories_create_read_and_errors(root):
    root.mkdir("d")
    with pytest.raises(FileExistsError):
        root.mkdir("d")
    with pytest.raises(IsADirectoryError):
        root.open_read("d")
    root.write("d/e/f.txt", b"deep")
    with pytest.raises(IsADirectoryError):
        root.write("d/e", b"x")
    with pytest.raises(FileNotFoundError):
        root.open_read("missing")
    with pytest.raises(NotADirectoryError):
        root.open_read("d/e/f.txt/g")
    with os.fdopen(root.open_read("d/e/f.txt"), "rb") as f:
        assert f.read() == b"deep"


def test_fifo_is_refused_without_blocking(root):
    os.mkfifo(os.path.join(root.path, "pipe"))
    with pytest.raises(PathEscapes):
        root.open_read("pipe")


def test_uploads_are_exclusive_temp_files_renamed_into_place(root):
    first = root.begin_write("x")
    second = root.begin_write("x")
    assert first.tmp != second.tmp
    assert sorted(os.listdir(root.path)) == sorted([first.tmp, second.tmp])
    first.file.write(b"one")
    second.file.write(b"two")
    first.commit()
    second.abort()
    assert os.listdir(root.path) == ["x"]
    assert open(os.path.join(root.path, "x"), "rb").read() == b"one"


def test_walk_lists_symlinks_as_symlinks_and_never_enters_them(root):
    root.write("a/f", b"1")
    os.symlink("/", os.path.join(root.path, "a", "to-root"))
    os.symlink(outside(root), os.path.join(root.path, "out"))
    found = [(e.path, e.kind) for e in safe_paths.walk(root)]
    assert found == [("a/f", "file"), ("a/to-root", "symlink"), ("out", "symlink")]


def test_workspace_listing_marks_symlinks(tmp_path):
    (tmp_path / "w").mkdir()
    ws = Workspace(str(tmp_path / "w"))
    ws.write("f.txt", b"hi")
    os.symlink("/etc/passwd", tmp_path / "w" / "pw")
    listing = {e["path"]: e for e in ws.list()}
    assert listing["f.txt"]["type"] == "file" and "sha256" in listing["f.txt"]
    assert listing["pw"] == {**listing["pw"], "type": "symlink", "target": "/etc/passwd"}
    assert "sha256" not in listing["pw"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the file identity needs root")
async def test_file_ops_threads_run_as_the_sandbox_uid(tmp_path):
    ws_dir = tmp_path / "w"
    ws_dir.mkdir()
    os.chown(ws_dir, 61234, 61234)
    secret = tmp_path / "root-only"
    secret.write_text("root")
    secret.chmod(0o600)
    ops = FileOps(61234, 61234, threads=2)
    try:
        assert await ops.check() == (61234, 61234)
        ws = Workspace(str(ws_dir))
        await ops.run(ws.write, "made/by/api.txt", b"x")
        for rel in ["made", "made/by", "made/by/api.txt"]:
            info = os.stat(ws_dir / rel)
            assert (info.st_uid, info.st_gid) == (61234, 61234), rel
        with pytest.raises(PermissionError):
            await ops.run(lambda: open(secret).read())
    finally:
        ops.close()
    # Only the pool's threads switched; this thread is still root.
    assert current_fs_ids() == (0, 0)
    assert threading.current_thread().name == "MainThread"

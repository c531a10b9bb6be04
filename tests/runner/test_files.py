"""Workspace files over HTTP: list/get/put/delete and refused path escapes."""

from __future__ import annotations

import hashlib
import json
import os


async def test_put_list_get_delete(shared_runner):
    data = b"hello workspace\n"
    response = await shared_runner.http("PUT", "/files/sub/dir/hello.txt", body=data)
    assert response.code == 204
    listing = json.loads((await shared_runner.http("GET", "/files")).body)["files"]
    entry = next(e for e in listing if e["path"] == "sub/dir/hello.txt")
    assert entry["size"] == len(data)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["mtime"] > 0
    got = await shared_runner.http("GET", "/files/sub/dir/hello.txt")
    assert got.code == 200 and got.body == data
    assert (await shared_runner.http("DELETE", "/files/sub/dir/hello.txt")).code == 204
    missing = await shared_runner.http("GET", "/files/sub/dir/hello.txt")
    assert missing.code == 404
    assert json.loads(missing.body)["reason"] == "not_found"


async def test_files_written_by_code_are_listed(shared_runner, channel):
    await channel.execute("open('from_code.txt', 'w').write('abc')")
    got = await shared_runner.http("GET", "/files/from_code.txt")
    assert got.body == b"abc"


async def test_dotdot_and_absolute_paths_are_refused(shared_runner):
    for path in ["/files/../secret", "/files/a/../../secret", "/files/%2E%2E/x"]:
        response = await shared_runner.http("GET", path)
        assert response.code in (400, 404), (path, response.code)
    for path in ["/files/..%2Fsecret", "/files/a%2F..%2F..%2Fsecret", "/files//etc/passwd"]:
        response = await shared_runner.http("GET", path)
        assert response.code == 400, (path, response.code)
        assert json.loads(response.body)["reason"] == "bad_path"
    put = await shared_runner.http("PUT", "/files/..%2Fescaped.txt", body=b"x")
    assert put.code == 400
    assert not (shared_runner.workspace.parent / "escaped.txt").exists()


async def test_symlinks_leaving_the_workspace_are_refused(shared_runner, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, shared_runner.workspace / "link-dir")
    os.symlink(outside / "secret.txt", shared_runner.workspace / "link-file")
    for path in ["/files/link-dir/secret.txt", "/files/link-file"]:
        response = await shared_runner.http("GET", path)
        assert response.code == 403, path
        assert json.loads(response.body)["reason"] == "path_escapes_workspace"
    put = await shared_runner.http("PUT", "/files/link-dir/new.txt", body=b"x")
    assert put.code == 403
    assert not (outside / "new.txt").exists()
    assert (await shared_runner.http("PUT", "/files/link-file", body=b"x")).code == 403
    assert (outside / "secret.txt").read_text() == "secret"
    listing = json.loads((await shared_runner.http("GET", "/files")).body)["files"]
    links = {e["path"]: e for e in listing if e["path"].startswith("link-")}
    assert {p: e["type"] for p, e in links.items()} == {
        "link-dir": "symlink",
        "link-file": "symlink",
    }
    assert links["link-dir"]["target"] == str(outside)
    assert not any("sha256" in e for e in links.values())
    # DELETE of a symlink removes the link itself, never its target.
    assert (await shared_runner.http("DELETE", "/files/link-dir")).code == 204
    assert (await shared_runner.http("DELETE", "/files/link-file")).code == 204
    assert not (shared_runner.workspace / "link-dir").is_symlink()
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


async def test_ipython_keeps_its_profile_out_of_the_workspace(start_runner, tmp_path):
    workspace = tmp_path / "home-is-workspace"
    workspace.mkdir()
    runner = start_runner(workspace=workspace, env={"HOME": str(workspace)})
    listing = json.loads((await runner.http("GET", "/files")).body)["files"]
    assert listing == []
    assert not (workspace / ".ipython").exists()

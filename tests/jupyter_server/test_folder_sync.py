"""kcr's Jupyter Server extension: the notebook's folder ↔ the kernel's working folder.

A real ``kcr-gateway`` (sandboxed pods, file store in its data folder) and a real
``jupyter server --gateway-url=…`` with the extension (installed by kcr-kernels' config
file, and named on the command line too); the tests write files into the server's root as
a user of JupyterLab would (upload = a file appears in the folder) and run cells through
the server's kernel WebSocket. Each test works in its own folder. Limits are small here:
``max_files=40``, ``max_file_bytes=1 MiB``, ``*.tmp`` skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.jupyter_server.client import APIError, KernelChannels, ServerAPI
from tests.jupyter_server.conftest import GATEWAY_TOKEN, SERVER_TOKEN
from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess

pytestmark = pytest.mark.bwrap

EXTENSION = "--ServerApp.jpserver_extensions=kcr_kernels.server_extension=True"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        GATEWAY_TOKEN,
        args=['--KCRGateway.pools={"python": {"warm": 3}}'],
    )
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, gateway):
    server = JupyterServerProcess(
        tmp_path_factory.mktemp("jupyter"),
        gateway,
        SERVER_TOKEN,
        args=[
            EXTENSION,
            "--KCRFolderSync.max_files=40",
            "--KCRFolderSync.max_file_bytes=1048576",
            "--KCRFolderSync.skip_patterns=__pycache__",
            "--KCRFolderSync.skip_patterns=*.tmp",
            "--KCRFolderSync.exclude_folders=private*",
        ],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(jupyter) -> ServerAPI:
    return ServerAPI(jupyter.url, jupyter.token)


class Notebook:
    """A session for ``folder/name`` with its kernel WebSocket open."""

    def __init__(self, api: ServerAPI, folder: Path, root: Path, name: str = "nb.ipynb"):
        self.api, self.folder, self.root, self.name = api, folder, root, name
        self.model: dict = {}
        self.ch: KernelChannels | None = None

    @property
    def path(self) -> str:
        return str((self.folder / self.name).relative_to(self.root))

    async def __aenter__(self) -> Notebook:
        self.model = await self.api.start_session(path=self.path)
        self.ch = await KernelChannels.open(self.api, self.model["kernel"]["id"], self.model["id"])
        return self

    async def __aexit__(self, *exc) -> None:
        if self.ch is not None:
            self.ch.close()
        with contextlib.suppress(APIError):
            await self.api.call("DELETE", f"/api/sessions/{self.model['id']}")

    async def run(self, code: str):
        run = await self.ch.execute(code)
        assert run.reply["status"] == "ok", (run.reply, run.outputs)
        return run

    @staticmethod
    def stderr(run) -> str:
        return "".join(
            m["content"]["text"]
            for m in run.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )

    async def kernel_files(self) -> list[str]:
        run = await self.run(
            "import os, json\n"
            "print(json.dumps(sorted(os.path.relpath(os.path.join(d, f)) "
            "for d, _, fs in os.walk('.') for f in fs)))"
        )
        return json.loads(run.stdout)


def _touch(path) -> str | bytes:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    return path


@pytest.fixture
def folder(jupyter) -> Path:
    path = jupyter.root_dir / f"f-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


async def test_folder_files_reach_the_kernel_and_its_files_come_back(api, jupyter, folder):
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.txt").write_text("more")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        run = await nb.run("print(open('data.csv').read(), open('sub/more.txt').read())")
        assert run.stdout == "a,b\n1,2\n more\n"
        assert nb.stderr(run) == ""
        # What the cell writes is next to the notebook once the reply is in.
        await nb.run("open('out.txt', 'w').write('from the kernel')")
        assert (folder / "out.txt").read_text() == "from the kernel"
        await nb.run(
            "import os; os.makedirs('plots', exist_ok=True)\n"
            "open('plots/p.bin', 'wb').write(bytes(range(256)))"
        )
        assert (folder / "plots" / "p.bin").read_bytes() == bytes(range(256))
        # Edits in the folder (upload, change, rename) reach the kernel before the next cell.
        (folder / "data.csv").write_text("a,b\n3,4\n")
        (folder / "new.txt").write_text("uploaded")
        os.rename(folder / "sub" / "more.txt", folder / "sub" / "renamed.txt")
        run = await nb.run(
            "import os; print(open('data.csv').read().split()[1], open('new.txt').read(), "
            "os.path.exists('sub/more.txt'), open('sub/renamed.txt').read())"
        )
        assert run.stdout == "3,4 uploaded False more\n"


async def test_deletes_go_both_ways(api, jupyter, folder):
    (folder / "gone-in-f.txt").write_text("x")
    (folder / "gone-in-kernel.txt").write_text("y")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        await nb.run("import os; os.remove('gone-in-kernel.txt')")
        assert not (folder / "gone-in-kernel.txt").exists()
        (folder / "gone-in-f.txt").unlink()
        files = await nb.kernel_files()
        assert "gone-in-f.txt" not in files and "gone-in-kernel.txt" not in files
        assert not (folder / "gone-in-kernel.txt").exists()


async def test_a_file_changed_on_both_sides_keeps_both_and_the_folder_wins(api, jupyter, folder):
    (folder / "both.txt").write_text("original")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        await nb.run("print(open('both.txt').read())")
        # The cell waits for input; meanwhile the user edits the file in the folder.
        msg_id = nb.ch.start_execute(
            "input('go'); open('both.txt', 'w').write('kernel version')", allow_stdin=True
        )
        await nb.ch.wait_for(lambda m: m.get("msg_type") == "input_request", what="input")
        (folder / "both.txt").write_text("folder version")
        nb.ch.send("input_reply", {"value": ""}, channel="stdin")
        run = await nb.ch.finish_execute(msg_id)
        assert run.reply["status"] == "ok", run.outputs
        copies = sorted(p.name for p in folder.glob("both.kernel-*.txt"))
        assert len(copies) == 1, sorted(p.name for p in folder.iterdir())
        assert (folder / copies[0]).read_text() == "kernel version"
        assert (folder / "both.txt").read_text() == "folder version"
        notice = nb.stderr(run)
        assert "both.txt was changed both in" in notice and copies[0] in notice
        # The kernel now has the folder's version, and the kept copy.
        run = await nb.run(f"print(open('both.txt').read(), open({copies[0]!r}).read())")
        assert run.stdout == "folder version kernel version\n"


async def test_skipped_names_and_limits_are_told_once(api, jupyter, folder):
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.txt").write_text("s")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "nb-checkpoint.ipynb").write_text("{}")
    (folder / "junk.tmp").write_text("t")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    os.truncate(_touch(folder / "huge.bin"), 10 << 30)  # 10 GB, sparse: nothing is written
    (folder / "ok.txt").write_text("ok")
    outside = folder.parent / f"outside-{folder.name}.txt"
    outside.write_text("outside secret")
    os.symlink(outside, folder / "link.txt")
    bad_name = os.fsencode(folder) + b"/bad-\xff.txt"
    _touch(bad_name)
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        run = await nb.run("print(1)")
        notice = nb.stderr(run)
        assert "huge.bin: it is 10.0 GiB, over the per-file limit of 1.0 MiB" in notice
        assert "link.txt: it is a symlink that points outside the folder" in notice
        assert "bad-\\xff.txt: its name is not UTF-8" in notice
        files = await nb.kernel_files()
        assert "ok.txt" in files
        for name in ("huge.bin", "junk.tmp", "link.txt"):
            assert name not in files
        assert not any(
            f.startswith((".hidden", ".ipynb_checkpoints", "__pycache__")) for f in files
        )
        assert not any("bad-" in f for f in files)
        # Told once: the next cells say nothing.
        assert nb.stderr(await nb.run("print(2)")) == ""
        # The kernel's hidden and too-large files stay in the kernel.
        await nb.run(
            "import os; os.makedirs('.cache', exist_ok=True); open('.cache/c', 'w').write('c');"
            "open('big.out', 'wb').write(b'x' * (2 << 20))"
        )
        run = await nb.run("print(3)")
        assert not (folder / ".cache").exists()
        assert not (folder / "big.out").exists()
        assert outside.read_text() == "outside secret"


async def test_a_folder_with_too_many_files_is_refused_with_a_notice(api, jupyter, folder):
    for i in range(45):
        (folder / f"f{i:03}.txt").write_text(str(i))
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        run = await nb.run("import os; print(len(os.listdir('.')))")
        assert "more than 40 files" in nb.stderr(run)
        assert run.stdout == "0\n"
        await nb.run("open('made.txt', 'w').write('m')")
        assert not (folder / "made.txt").exists()  # nothing is written into a refused folder
        assert nb.stderr(await nb.run("print(1)")) == ""  # told once


async def test_two_notebooks_in_one_folder_share_its_files(api, jupyter, folder):
    async with (
        Notebook(api, folder, jupyter.root_dir, "a.ipynb") as a,
        Notebook(api, folder, jupyter.root_dir, "b.ipynb") as b,
    ):
        await a.run("open('from-a.txt', 'w').write('A')")
        run = await b.run("print(open('from-a.txt').read())")
        assert run.stdout == "A\n"
        await b.run("open('from-b.txt', 'w').write('B')")
        run = await a.run("print(open('from-b.txt').read())")
        assert run.stdout == "B\n"


async def test_a_moved_notebook_syncs_with_its_new_folder(api, jupyter, folder):
    (folder / "old.txt").write_text("old")
    other = folder / "elsewhere"
    other.mkdir()
    (other / "there.txt").write_text("there")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        run = await nb.run(
            "import os; print(sorted(f for f in os.listdir('.') if f.endswith('.txt')))"
        )
        assert run.stdout == "['old.txt']\n"
        new_path = str((other / "nb.ipynb").relative_to(jupyter.root_dir))
        await api.call("PATCH", f"/api/sessions/{nb.model['id']}", {"path": new_path})
        run = await nb.run(
            "import os; print(sorted(f for f in os.listdir('.') if f.endswith('.txt')))"
        )
        assert run.stdout == "['there.txt']\n"
        assert (folder / "old.txt").read_text() == "old"


async def test_sync_is_off_by_notebook_metadata_and_by_config(api, jupyter, folder):
    (folder / "nb.ipynb").write_text(
        json.dumps(
            {
                "cells": [],
                "metadata": {"kcr": {"folder_sync": False}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    (folder / "data.txt").write_text("d")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        await nb.run("open('out.txt', 'w').write('o')")
        assert not (folder / "out.txt").exists()
        run = await nb.run("import os; print(os.path.exists('data.txt'))")
        assert run.stdout == "False\n"
    private = jupyter.root_dir / f"private-{folder.name}"
    private.mkdir()
    (private / "data.txt").write_text("d")
    async with Notebook(api, private, jupyter.root_dir) as nb:
        run = await nb.run("import os; print(os.path.exists('data.txt'))")
        assert run.stdout == "False\n"


async def test_a_restarted_gateway_keeps_both_sides(api, jupyter, gateway, folder):
    (folder / "before.txt").write_text("b")
    async with Notebook(api, folder, jupyter.root_dir) as nb:
        await nb.run("open('k1.txt', 'w').write('k1')")
        assert (folder / "k1.txt").exists()
        gateway.stop()
        (folder / "during.txt").write_text("d")
        gateway.start()
        kernel_id = nb.model["kernel"]["id"]
        nb.ch.close()
        nb.ch = await KernelChannels.open(api, kernel_id, nb.model["id"])
        run = await nb.run(
            "print(open('before.txt').read(), open('during.txt').read(), open('k1.txt').read())"
        )
        assert run.stdout == "b d k1\n"
        await nb.run("open('k2.txt', 'w').write('k2')")
        assert (folder / "k2.txt").read_text() == "k2"


async def test_python3_notebooks_start_on_kcr_python(api, jupyter, gateway, folder):
    """Jupyter Server's own default (python3) and stock notebooks' kernelspec name start
    kcr-python through the gateway's alias; the alias is not a second launcher entry."""
    specs = await ServerAPI(gateway.url, gateway.token).call("GET", "/api/kernelspecs")
    assert "python3" not in specs["kernelspecs"] and specs["default"] == "kcr-python"
    spec = await ServerAPI(gateway.url, gateway.token).call("GET", "/api/kernelspecs/python3")
    assert spec["spec"]["display_name"] == "Python 3 (kcr)"
    model = await api.start_session("python3", path=f"{folder.name}/stock.ipynb")
    try:
        assert model["kernel"]["name"] == "kcr-python"
        ch = await KernelChannels.open(api, model["kernel"]["id"], model["id"])
        try:
            run = await ch.execute("import os; print(os.getcwd())")
            assert run.stdout == "/work\n"
        finally:
            ch.close()
    finally:
        await api.call("DELETE", f"/api/sessions/{model['id']}")

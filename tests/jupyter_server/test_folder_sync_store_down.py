"""Folder sync while the gateway's file store (S3) is down: a clear notice, no file lost.

A real ``kcr-gateway`` whose file store is moto's S3 server behind a
:class:`~tests.fakes.fault_proxy.FaultProxyDouble` (mode ``refuse`` = the store is
down), and a real Jupyter Server with the extension. While the store refuses, a file added
to the notebook's folder and a file the cell writes cannot move: the cell still runs, its
output says once what is wrong, and both files arrive on the other side once the store is
back (with one "in sync again" line).
"""

from __future__ import annotations

import uuid

import pytest

from tests.fakes.fault_proxy import FaultProxyDouble
from tests.jupyter_server.client import ServerAPI
from tests.jupyter_server.conftest import GATEWAY_TOKEN, SERVER_TOKEN
from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess
from tests.jupyter_server.test_folder_sync import EXTENSION, Notebook
from tests.services import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY

pytestmark = pytest.mark.bwrap


class S3GatewayProcess(GatewayProcess):
    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
        }


@pytest.fixture(scope="module")
def proxy(s3_server):
    proxy = FaultProxyDouble("127.0.0.1", s3_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, proxy):
    gw = S3GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        GATEWAY_TOKEN,
        args=[
            '--KCRGateway.pools={"python": {"warm": 1}}',
            f"--KCRGateway.files_url=s3://folder-sync-{uuid.uuid4().hex[:8]}/files",
            f"--KCRGateway.s3_endpoint_url={proxy.url}",
            "--KCRGateway.s3_create_bucket=True",
        ],
    )
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, gateway):
    server = JupyterServerProcess(
        tmp_path_factory.mktemp("jupyter"), gateway, SERVER_TOKEN, args=[EXTENSION]
    )
    server.start()
    yield server
    server.stop()


async def test_store_down_tells_once_and_loses_no_file(jupyter, proxy):
    api = ServerAPI(jupyter.url, jupyter.token)
    folder = jupyter.root_dir / "project"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    nb = Notebook(api, folder, jupyter.root_dir)
    async with nb:
        assert (await nb.run("print(open('a.txt').read())")).stdout == "a\n"
        proxy.mode = "refuse"
        try:
            (folder / "b.txt").write_text("uploaded while down")
            run = await nb.run("open('k.txt', 'w').write('written while down'); print('ran')")
            assert run.stdout == "ran\n"
            notice = nb.stderr(run)
            assert "are not in sync" in notice and "Nothing is lost" in notice, notice
            assert notice.count("are not in sync") == 1, notice  # (the gateway adds its own)
            run = await nb.run("print('still down')")
            assert "are not in sync" not in nb.stderr(run)  # told once per outage
        finally:
            proxy.mode = "pass"
        run = await nb.run("print(open('b.txt').read())")
        assert run.stdout == "uploaded while down\n"
        assert "in sync again" in nb.stderr(run)
        assert (folder / "k.txt").read_text() == "written while down"
        assert (folder / "a.txt").read_text() == "a"
        assert (folder / "b.txt").read_text() == "uploaded while down"

"""``kcr-kernels lab``: the ``jupyter lab`` command line it runs, and its work-around for
Jupyter Server's 500 on ``/api/resolvePath`` in gateway mode (JupyterLab asks it to link
file names in outputs), checked on a real Jupyter Server in front of a real gateway."""

from __future__ import annotations

import pytest

from kcr_kernels.lab import DEFAULT_PORT, lab_command
from tests.jupyter_server.client import ServerAPI
from tests.jupyter_server.conftest import SERVER_TOKEN
from tests.jupyter_server.servers import JupyterServerProcess

WORK_AROUND = next(a for a in lab_command("http://gw", [], as_root=False) if "kernel_manager" in a)


def test_the_command_line():
    command = lab_command("http://127.0.0.1:8888/", ["--no-browser"], as_root=True)
    assert command[1:3] == ["-m", "jupyterlab"]
    assert "--gateway-url=http://127.0.0.1:8888" in command
    assert f"--port={DEFAULT_PORT}" in command and "--allow-root" in command
    assert command[-1] == "--no-browser"
    assert not any("token" in a for a in command)  # the token goes in the environment
    mine = lab_command("http://gw", ["--port=9999"], as_root=False)
    assert "--allow-root" not in mine and f"--port={DEFAULT_PORT}" not in mine


@pytest.fixture(scope="module")
def patched_server(tmp_path_factory, gateway):
    server = JupyterServerProcess(
        tmp_path_factory.mktemp("jupyter"), gateway, SERVER_TOKEN, args=[WORK_AROUND]
    )
    server.start()
    yield server
    server.stop()


async def test_resolve_path_answers_for_a_gateway_kernel(patched_server):
    api = ServerAPI(patched_server.url, patched_server.token)
    kernel = await api.call("POST", "/api/kernels", {"name": "kcr-python"})
    try:
        answer = await api.call("GET", f"/api/resolvePath?path=data.csv&kernel={kernel['id']}")
        assert answer == {"resolved": []}  # the kernel's files are in its pod, not here
    finally:
        await api.call("DELETE", f"/api/kernels/{kernel['id']}")
    assert "AssertionError" not in patched_server.log_text()

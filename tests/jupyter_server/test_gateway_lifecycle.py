"""Jupyter Server with kcr-gateway when the gateway restarts or cannot give a pod in time.

Each test starts its own gateway and server (different pool settings), so
they do not disturb the shared pair of ``test_gateway_client.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.jupyter_server.client import APIError, KernelChannels, ServerAPI, poll_until
from tests.jupyter_server.conftest import GATEWAY_TOKEN, SERVER_TOKEN
from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess


@pytest.fixture
def make_pair(tmp_path):
    """``make_pair(pools, env, server_args)`` -> a started (gateway, server); both stopped after."""
    started = []

    def make(pools: dict, env: dict | None = None, server_args=()):
        gateway = GatewayProcess(
            tmp_path / "gateway", GATEWAY_TOKEN, args=[f"--KCRGateway.pools={json.dumps(pools)}"]
        )
        started.append(gateway.start())
        server = JupyterServerProcess(
            tmp_path / "jupyter", gateway, SERVER_TOKEN, env=env, args=server_args
        )
        started.append(server.start())
        return gateway, server

    yield make
    for process in reversed(started):
        process.stop()


async def test_gateway_restart_under_a_running_server_keeps_kernels(make_pair):
    gateway, server = make_pair(
        {"python": {"warm": 1}},
        # Let the server's kernel WebSocket to the gateway retry through the restart.
        server_args=[
            "--GatewayClient.gateway_retry_max=30",
            "--GatewayClient.gateway_retry_interval=0.2",
            "--GatewayClient.gateway_retry_interval_max=1",
        ],
    )
    api = ServerAPI(server.url, server.token)
    gateway_api = ServerAPI(gateway.url, gateway.token)
    model = await api.start_session()
    kernel_id = model["kernel"]["id"]
    ch = await KernelChannels.open(api, kernel_id, model["id"])
    try:
        assert (await ch.execute("value = 'kept'; print('before')")).stdout == "before\n"

        gateway.stop()
        # The server stays up and says clearly that its gateway is unreachable.
        assert server.proc.poll() is None
        assert (await api.call("GET", "/api/contents"))["type"] == "directory"
        with pytest.raises(APIError) as e:
            await api.call("GET", "/api/kernels")
        assert e.value.code in (503, 504), e.value
        assert "Gateway" in e.value.body

        await asyncio.to_thread(gateway.start)
        # The kernel outlived the gateway process (durable kernels) ...
        assert kernel_id in await api.kernel_ids()
        # ... the server's WebSocket found its way back to it, and its variables are there.
        await poll_until(
            lambda: _gateway_connections(gateway_api, kernel_id),
            what="the server reconnecting its kernel WebSocket to the gateway",
        )
        run = await ch.execute("print(value)")
        assert run.stdout == "kept\n", run
    finally:
        ch.close()
        await api.call("DELETE", f"/api/sessions/{model['id']}")


async def test_fresh_connection_to_a_kernel_adopted_after_a_restart_knows_its_language(
    make_pair,
):
    # JupyterLab asks kernel_info first thing on connect and writes language_info into the
    # notebook: a kernel the restarted gateway has not put on a pod yet must still answer it.
    gateway, server = make_pair({"python": {"warm": 1}})
    api = ServerAPI(server.url, server.token)
    model = await api.start_session()
    kernel_id = model["kernel"]["id"]
    ch = await KernelChannels.open(api, kernel_id, model["id"])
    await ch.execute("value = 'kept'")
    ch.close()
    gateway.stop()
    await asyncio.to_thread(gateway.start)

    ch = await KernelChannels.open(api, kernel_id, model["id"])
    try:
        info = await ch.request("kernel_info_request", channel="control")
        assert info["content"]["language_info"]["name"] == "python"
        assert info["content"]["language_info"]["file_extension"] == ".py"
        assert (await ch.execute("print(value)")).stdout == "kept\n"
    finally:
        ch.close()
        await api.call("DELETE", f"/api/sessions/{model['id']}")


async def _gateway_connections(gateway_api: ServerAPI, kernel_id: str) -> int:
    return (await gateway_api.call("GET", f"/api/kernels/{kernel_id}"))["connections"]


async def test_kernel_launch_timeout_from_the_server_bounds_the_wait_for_a_pod(make_pair):
    # One pod at most and none kept warm: while the first kernel's pod is cold-starting,
    # a second kernel can only wait for a pod to free up, for KERNEL_LAUNCH_TIMEOUT seconds.
    _, server = make_pair(
        {"python": {"warm": 0, "max": 1}},
        env={"KERNEL_LAUNCH_TIMEOUT": "3"},
        server_args=["--GatewayClient.request_timeout=5"],
    )
    api = ServerAPI(server.url, server.token)
    results = await asyncio.gather(
        api.call("POST", "/api/kernels", {"name": "kcr-python"}),
        api.call("POST", "/api/kernels", {"name": "kcr-python"}),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if isinstance(r, APIError)]
    assert len(started) == 1 and len(failed) == 1, results
    assert failed[0].code == 503
    # Jupyter Server 2.x drops the gateway's message from its JSON error; it logs it.
    assert "no python pod became free within 3 s" in server.log_text()
    assert await api.kernel_ids() == [started[0]["id"]]

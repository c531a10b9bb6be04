"""Fixtures: a real ``kcr-gateway`` and a real Jupyter Server using it (``--gateway-url``).

``gateway`` and ``jupyter`` are shared by the module (starting a Jupyter Server
takes seconds); tests use their own sessions and kernels. ``api`` is the
server's REST API with its token, ``gateway_api`` the gateway's own.

The server runs with ``KERNEL_*`` variables in its environment, which
GatewayClient forwards on every kernel start: ``KERNEL_USERNAME``,
``KERNEL_PROJECT``, ``KERNEL_LAUNCH_TIMEOUT`` (25 s; GatewayClient derives it from its
``request_timeout``, so both are set). ``ALLOWED_VAR`` is allowed on
both sides, ``CLIENT_ONLY_VAR`` only by the server (the gateway drops it) and
``KCR_TEST_SECRET`` by neither.
"""

from __future__ import annotations

import pytest

from tests.jupyter_server.client import ServerAPI
from tests.jupyter_server.servers import GatewayProcess, JupyterServerProcess

GATEWAY_TOKEN = "gateway-secret-token"
SERVER_TOKEN = "server-secret-token"

SERVER_ENV = {
    "KERNEL_USERNAME": "alice",
    "KERNEL_PROJECT": "apollo",
    "KERNEL_LAUNCH_TIMEOUT": "25",
    "ALLOWED_VAR": "allowed-value",
    "CLIENT_ONLY_VAR": "client-only",
    "KCR_TEST_SECRET": "must-not-leak",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        GATEWAY_TOKEN,
        args=[
            '--KCRGateway.pools={"python": {"warm": 2}}',
            "--KCRGateway.env_whitelist=ALLOWED_VAR",
        ],
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
        env=SERVER_ENV,
        args=[
            "--GatewayClient.allowed_envs=ALLOWED_VAR,CLIENT_ONLY_VAR",
            # GatewayClient keeps KERNEL_LAUNCH_TIMEOUT = request_timeout - launch_timeout_pad (2).
            "--GatewayClient.request_timeout=27",
        ],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(jupyter) -> ServerAPI:
    return ServerAPI(jupyter.url, jupyter.token)


@pytest.fixture
def gateway_api(gateway) -> ServerAPI:
    return ServerAPI(gateway.url, gateway.token)

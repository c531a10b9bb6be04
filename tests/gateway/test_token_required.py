"""With authentication on, a request without a valid token is a 403 that says how to send
one, on every API endpoint including ``GET /api``; the probes stay open."""

import json

import pytest
import pytest_asyncio

from tests.gateway.conftest import http, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROTECTED = [
    ("GET", "/api"),
    ("GET", "/api/kernels"),
    ("POST", "/api/kernels"),
    ("GET", "/api/kernelspecs"),
    ("GET", "/api/kernels/0b7e5e52-1b9a-4c4e-9a7e-1f2d3c4b5a69"),
    ("GET", "/api/kernels/0b7e5e52-1b9a-4c4e-9a7e-1f2d3c4b5a69/files"),
    ("GET", "/api/kcr/pools"),
    ("GET", "/kernelspecs/kcr-python/logo-64x64.png"),
    ("GET", "/metrics"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base(tmp_path_factory):
    app = await start_gateway(
        tmp_path_factory.mktemp("gw"), auth_token="s3cret", pools={"python": {"warm": 0}}
    )
    yield f"http://127.0.0.1:{app.port}"
    await app.stop_async()


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_no_token_is_a_403_saying_how_to_send_one(base, method, path):
    r = await http(base, method, path)
    assert r.code == 403
    body = r.json()
    assert body["reason"] == "Forbidden"
    assert body["message"].startswith("This gateway requires a token")
    assert "Authorization: token <token>" in body["message"]
    assert "?token=<token>" in body["message"]


async def test_a_wrong_token_is_named_as_not_valid(base):
    r = await http(base, "GET", "/api/kernels", token="wrong")
    assert r.code == 403
    assert r.json()["message"].startswith("The token sent is not valid for this gateway")


async def test_api_answers_with_the_token(base):
    r = await http(base, "GET", "/api", token="s3cret")
    assert r.code == 200
    assert r.json()["gateway"] == "kcr-gateway"
    assert (await http(base, "GET", "/api?token=s3cret")).code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_need_no_token(base, path):
    assert (await http(base, "GET", path)).code == 200


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        ("", 403, "This gateway requires a token"),
        ("s3cret", 404, "Kernel does not exist"),
    ],
)
async def test_a_refused_websocket_upgrade_is_json_too(base, token, code, message):
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    url = base.replace("http", "ws") + "/api/kernels/0b7e5e52-1b9a-4c4e-9a7e-1f2d3c4b5a69/channels"
    headers = {"Authorization": f"token {token}"} if token else {}
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url, headers=headers))
    assert refused.value.code == code
    assert json.loads(refused.value.response.body)["message"].startswith(message)

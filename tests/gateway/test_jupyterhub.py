"""JupyterHub API tokens checked against a Hub double (tests/fakes/fake_hub.py).

The gateway asks ``GET {hub}/hub/api/user`` with the client's token; Hub users become
identities (Hub admins are admins), the answers are cached, and every way the Hub can
fail — down, an HTML page, JSON that is not a user — refuses the token (503, one log
line) while identities cached before keep working until they expire.
"""

import asyncio
import logging

import pytest
import pytest_asyncio

from tests.fakes.fake_hub import FakeHub
from tests.gateway.conftest import http, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCOPE = "access:services!service=kcr"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub():
    hub = FakeHub()
    await hub.start()
    hub.add_token("hub-alice", "alice", scopes=[SCOPE])
    hub.add_token("hub-bob", "bob", scopes=["access:services"])  # every service
    hub.add_token("hub-root", "root", admin=True, scopes=[SCOPE])
    hub.add_token("hub-other", "eve", scopes=["access:services!service=another"])
    hub.add_token("hub-service", "culler", kind="service", scopes=[SCOPE])
    yield hub
    await hub.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory, hub):
    app = await start_gateway(
        tmp_path_factory.mktemp("gw"),
        classes={
            "KCRIdentityProvider": {
                "hub_api_url": hub.api_url,
                "hub_access_scopes": {SCOPE},
                "hub_cache_seconds": 600,
            },
            "KCRAuthorizer": {"kernel_ownership": True},
        },
    )
    yield app
    await app.stop_async()


@pytest.fixture
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture(autouse=True)
def hub_up(hub):
    hub.mode = ""
    yield
    hub.mode = ""


async def code(base: str, token: str) -> int:
    return (await http(base, "GET", "/api/kernels", token=token)).code


async def test_hub_users_own_their_kernels_and_hub_admins_see_all(base):
    r = await http(base, "POST", "/api/kernels", {"name": "kcr-python"}, token="hub-alice")
    assert r.code == 201, r.body
    kernel_id = r.json()["id"]
    try:
        for token, sees in (("hub-alice", True), ("hub-bob", False), ("hub-root", True)):
            r = await http(base, "GET", "/api/kernels", token=token)
            assert r.code == 200, (token, r.body)
            assert (kernel_id in {k["id"] for k in r.json()}) is sees, token
            r = await http(base, "GET", f"/api/kernels/{kernel_id}", token=token)
            assert r.code == (200 if sees else 404), token
    finally:
        await http(base, "DELETE", f"/api/kernels/{kernel_id}", token="hub-alice")


async def test_tokens_the_hub_refuses_or_scopes_that_do_not_fit(base, caplog):
    caplog.set_level(logging.WARNING)
    assert await code(base, "hub-unknown") == 403
    assert await code(base, "hub-other") == 403  # a token for another service
    assert "has none of the scopes" in caplog.text
    assert await code(base, "hub-service") == 403  # only user tokens
    assert "only user tokens are accepted" in caplog.text
    assert await code(base, "") == 403


async def test_identities_are_cached(base, hub):
    assert await code(base, "hub-bob") == 200
    asked = hub.requests
    for _ in range(3):
        assert await code(base, "hub-bob") == 200
    assert hub.requests == asked


@pytest.mark.parametrize("mode", ["html", "not-user", "down"])
async def test_a_hub_that_answers_badly_refuses_tokens_with_one_log_line(
    gateway, base, hub, mode, caplog
):
    caplog.set_level(logging.DEBUG)
    gateway.log.addHandler(caplog.handler)  # the app's logger does not propagate
    hub.mode = mode
    for _ in range(3):
        r = await http(base, "GET", "/api/kernels", token=f"hub-new-{mode}")
        assert r.code == 503, r.body
        assert "could not be checked with JupyterHub" in r.json()["message"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in errors if "JupyterHub API" in m]) == 1, errors
    assert "Traceback" not in caplog.text
    hub.mode = ""
    assert await code(base, f"hub-new-{mode}") == 403  # the Hub answers again: unknown token
    assert "answers again" in caplog.text
    gateway.log.removeHandler(caplog.handler)


async def test_an_unreachable_hub_fails_closed_but_honours_cached_identities(tmp_path, caplog):
    hub = FakeHub()
    await hub.start()
    hub.add_token("hub-alice", "alice", scopes=[SCOPE])
    hub.add_token("hub-bob", "bob", scopes=[SCOPE])
    app = await start_gateway(
        tmp_path,
        classes={
            "KCRIdentityProvider": {
                "hub_api_url": hub.api_url,
                "hub_access_scopes": {SCOPE},
                "hub_cache_seconds": 2.0,
                "hub_timeout": 2.0,
            }
        },
    )
    base = f"http://127.0.0.1:{app.port}"
    try:
        assert await code(base, "hub-alice") == 200  # cached from now on
        await hub.stop()  # connection refused from now on
        caplog.set_level(logging.INFO)
        app.log.addHandler(caplog.handler)  # the app's logger does not propagate
        assert await code(base, "hub-alice") == 200  # the cached identity still works
        assert await code(base, "hub-bob") == 503  # not cached: fail closed
        assert await code(base, "hub-bob") == 503
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while await code(base, "hub-alice") != 503:  # its cache entry expires
            assert loop.time() < deadline, "the cached identity never expired"
            await asyncio.sleep(0.1)
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len([r for r in unreachable if r.levelno >= logging.ERROR]) == 1
    finally:
        await app.stop_async()

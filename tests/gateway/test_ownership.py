"""Kernels have owners: two identities and an admin from a token file, on a real gateway.

Another user's kernel is a 404 on every endpoint (REST, WebSocket, files), exactly like
a kernel that does not exist, and is missing from their list; admins see every kernel.
"""

import asyncio
import logging
import uuid

import pytest
import pytest_asyncio
from kcr_gateway.tokens import token_line

from tests.gateway.conftest import WSKernelClient, http, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB, ADMIN = "tok-alice-5f2c9a1e77", "tok-bob-0d9e2b44c1", "tok-admin-93ab7c12de"


def write_tokens(path, *lines: str) -> None:
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    write_tokens(
        path,
        token_line(ALICE, "alice"),
        token_line(BOB, "bob"),
        token_line(ADMIN, "root", "admin"),
    )
    return path


def options(token_file) -> dict:
    return dict(
        classes={
            "KCRIdentityProvider": {"token_file": str(token_file), "token_file_interval": 0.1},
            "KCRAuthorizer": {"kernel_ownership": True},
        },
        max_kernels_per_user=2,
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory, token_file):
    app = await start_gateway(tmp_path_factory.mktemp("gw"), **options(token_file))
    yield app
    await app.stop_async()


@pytest.fixture
def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def start(base: str, token: str, **body) -> str:
    r = await http(base, "POST", "/api/kernels", {"name": "kcr-python", **body}, token=token)
    assert r.code == 201, r.body
    return r.json()["id"]


async def listed(base: str, token: str) -> set[str]:
    r = await http(base, "GET", "/api/kernels", token=token)
    assert r.code == 200, r.body
    return {k["id"] for k in r.json()}


async def test_another_users_kernel_is_a_404_everywhere(base):
    kernel_id = await start(base, ALICE, env={"KERNEL_USERNAME": "bob"})
    ghost = str(uuid.uuid4())  # a kernel that does not exist: bob must see the same
    try:
        put = await http(base, "PUT", f"/api/kernels/{kernel_id}/files/a.txt", b"x", ALICE)
        assert put.code == 201, put.body
        requests = [
            ("GET", "/api/kernels/{}", None),
            ("POST", "/api/kernels/{}/interrupt", None),
            ("POST", "/api/kernels/{}/restart", None),
            ("GET", "/api/kernels/{}/files", None),
            ("GET", "/api/kernels/{}/files/a.txt", None),
            ("PUT", "/api/kernels/{}/files/b.txt", b"planted"),
            ("DELETE", "/api/kernels/{}/files/a.txt", None),
            ("DELETE", "/api/kernels/{}", None),
        ]
        for method, path, body in requests:
            theirs = await http(base, method, path.format(kernel_id), body, BOB)
            missing = await http(base, method, path.format(ghost), body, BOB)
            assert theirs.code == 404, (method, path, theirs.code, theirs.body)
            assert missing.code == 404, (method, path, missing.body)
            assert theirs.json()["message"].replace(kernel_id, "ID") == missing.json()[
                "message"
            ].replace(ghost, "ID"), (method, path)
        with pytest.raises(Exception, match="404"):
            await WSKernelClient.connect(base, kernel_id, token=BOB)
        assert kernel_id not in await listed(base, BOB)

        # Nothing bob did reached the kernel: it runs, alice's file is there, his is not.
        files = await http(base, "GET", f"/api/kernels/{kernel_id}/files", token=ALICE)
        assert [f["path"] for f in files.json()["files"]] == ["a.txt"]
        assert kernel_id in await listed(base, ALICE)
        client = await WSKernelClient.connect(base, kernel_id, token=ALICE)
        try:
            r = await client.execute("import os; print(os.environ['KERNEL_USERNAME'])")
            assert r.stdout == "alice\n"  # from the identity, not the request's env
        finally:
            client.close()

        # The admin sees and drives it.
        assert kernel_id in await listed(base, ADMIN)
        assert (await http(base, "GET", f"/api/kernels/{kernel_id}", token=ADMIN)).code == 200
        r = await http(base, "GET", f"/api/kernels/{kernel_id}/files/a.txt", token=ADMIN)
        assert (r.code, r.body) == (200, b"x")
        client = await WSKernelClient.connect(base, kernel_id, token=ADMIN)
        try:
            assert (await client.execute("1+1")).content["status"] == "ok"
        finally:
            client.close()
    finally:
        assert (await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=ALICE)).code == 204


async def test_lists_show_own_kernels_only(base):
    mine = await start(base, ALICE)
    his = await start(base, BOB)
    try:
        alice, bob, admin = [await listed(base, t) for t in (ALICE, BOB, ADMIN)]
        assert mine in alice and his not in alice
        assert his in bob and mine not in bob
        assert {mine, his} <= admin
    finally:
        assert (await http(base, "DELETE", f"/api/kernels/{mine}", token=ALICE)).code == 204
        # The admin may delete anyone's kernel.
        assert (await http(base, "DELETE", f"/api/kernels/{his}", token=ADMIN)).code == 204


async def test_per_user_limit_counts_the_identity_not_kernel_username(base):
    first = await start(base, BOB, env={"KERNEL_USERNAME": "x"})
    second = await start(base, BOB, env={"KERNEL_USERNAME": "y"})
    try:
        body = {"name": "kcr-python", "env": {"KERNEL_USERNAME": "z"}}
        r = await http(base, "POST", "/api/kernels", body, token=BOB)
        assert r.code == 403
        assert "bob already runs the maximum of 2" in r.json()["message"]
        # Another identity is not held back by bob's kernels.
        other = await start(base, ALICE)
        await http(base, "DELETE", f"/api/kernels/{other}", token=ALICE)
    finally:
        for kernel_id in (first, second):
            await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=BOB)


async def test_client_chosen_kernel_ids_must_be_uuids(base):
    for bad in ("evil-chosen-id", "../x", str(uuid.uuid4()).upper(), uuid.uuid4().hex, 42):
        r = await http(base, "POST", "/api/kernels", {"kernel_id": bad}, token=ALICE)
        assert r.code == 400, (bad, r.body)
        assert "UUID" in r.json()["message"] and "reason" in r.json()
    chosen = str(uuid.uuid4())
    r = await http(base, "POST", "/api/kernels", {"kernel_id": chosen}, token=ALICE)
    assert (r.code, r.json()["id"]) == (201, chosen)
    await http(base, "DELETE", f"/api/kernels/{chosen}", token=ALICE)


async def status(base: str, token: str) -> int:
    return (await http(base, "GET", "/api/kernels", token=token)).code


async def wait_status(base: str, token: str, want: int, what: str, timeout: float = 15) -> None:
    """Poll until ``token`` gets ``want`` (the file is re-read every 0.1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (code := await status(base, token)) != want:
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what} (still {code})")
        await asyncio.sleep(0.05)


async def test_token_file_changes_apply_without_restart(base, token_file, caplog):
    carol = "tok-carol-71c3e0aa58"
    assert await status(base, carol) == 403
    original = token_file.read_text()
    try:
        token_file.write_text(original + token_line(carol, "carol") + "\n")
        await wait_status(base, carol, 200, "the added token works")
        # Remove bob's line: his token stops working, the others keep working.
        kept = [line for line in token_file.read_text().splitlines() if " bob" not in line]
        write_tokens(token_file, *kept)
        await wait_status(base, BOB, 403, "the removed token is refused")
        assert await status(base, carol) == 200 and await status(base, ALICE) == 200
        # A bad line is skipped with a log line naming it; the good lines keep working.
        write_tokens(token_file, *kept, f"sha256:{'0' * 10} mallory admin")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while f"line {len(kept) + 1} skipped" not in caplog.text:
            assert loop.time() < deadline, "the bad line was not reported"
            await asyncio.sleep(0.05)
        assert await status(base, carol) == 200
    finally:
        token_file.write_text(original)
        await wait_status(base, BOB, 200, "bob is back")


async def test_owners_survive_a_gateway_restart(tmp_path, token_file):
    app = await start_gateway(tmp_path, **options(token_file))
    base = f"http://127.0.0.1:{app.port}"
    try:
        kernel_id = await start(base, ALICE)
    finally:
        await app.stop_async()  # the kernel hibernates into the registry
    app = await start_gateway(tmp_path, **options(token_file))
    base = f"http://127.0.0.1:{app.port}"
    try:
        assert (await http(base, "GET", f"/api/kernels/{kernel_id}", token=BOB)).code == 404
        assert kernel_id not in await listed(base, BOB)
        assert kernel_id in await listed(base, ALICE)
        r = await http(base, "GET", f"/api/kernels/{kernel_id}", token=ALICE)
        assert r.code == 200 and r.json()["execution_state"] == "hibernated"
        await http(base, "DELETE", f"/api/kernels/{kernel_id}", token=ALICE)
    finally:
        await app.stop_async()


async def test_kernelspec_resources(base, caplog):
    caplog.set_level(logging.INFO)
    logo = "/kernelspecs/kcr-python/logo-64x64.png"
    r = await http(base, "GET", logo)
    assert r.code == 403
    assert r.headers["Content-Type"].startswith("application/json") and r.json()["message"]
    r = await http(base, "GET", logo, token="wrong")
    assert r.code == 403 and set(r.json()) >= {"reason", "message"}
    r = await http(base, "GET", logo, token=BOB)
    assert r.code == 200 and r.body.startswith(b"\x89PNG")
    for path in ("/kernelspecs/kcr-python/nope.png", "/kernelspecs/no-such-spec/logo-64x64.png"):
        r = await http(base, "GET", path, token=BOB)
        assert r.code == 404, (path, r.body)
        assert r.headers["Content-Type"].startswith("application/json"), path
        assert set(r.json()) >= {"reason", "message"}
    r = await http(base, "POST", logo, b"", token=BOB)
    assert r.code == 405 and set(r.json()) >= {"reason", "message"}
    r = await http(base, "GET", "/kernelspecs/kcr-python/..%2f..%2fkernel.json", token=BOB)
    assert r.code in (403, 404) and r.json()["message"]
    assert "Traceback" not in caplog.text
    assert "Uncaught exception" not in caplog.text


async def test_tokens_never_reach_the_log(gateway, base, caplog):
    caplog.set_level(logging.DEBUG)
    gateway.log.addHandler(caplog.handler)  # the app's own logger does not propagate
    secret = "tok-not-a-real-one-4f1b2c3d"
    assert (await http(base, "GET", f"/api/kernels?token={secret}")).code == 403
    assert (await http(base, "GET", f"/api/nope?token={ALICE}")).code == 404
    r = await http(base, "GET", "/api/kernels", headers={"Authorization": f"Bearer {secret}"})
    assert r.code == 403
    with pytest.raises(Exception, match="403"):
        await WSKernelClient.connect(base, str(uuid.uuid4()) + f"?token={secret}")
    text = caplog.text
    assert "/api/kernels?token=[redacted]" in text  # the 4xx lines are there, redacted
    assert secret not in text and ALICE not in text
    gateway.log.removeHandler(caplog.handler)

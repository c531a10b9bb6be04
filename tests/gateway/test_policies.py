"""Operator policies: token auth, kernel limits, idle culling, sandboxing seen from a kernel."""

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel

pytestmark = pytest.mark.asyncio(loop_scope="module")


def base(app) -> str:
    return f"http://127.0.0.1:{app.port}"


async def test_token_auth(tmp_path):
    app = await start_gateway(tmp_path, auth_token="s3cret")
    try:
        assert (await http(base(app), "GET", "/api/kernels")).code == 403
        assert (await http(base(app), "GET", "/api/kernels", token="wrong")).code == 403
        assert (await http(base(app), "GET", "/api/kernels", token="s3cret")).code == 200
        assert (await http(base(app), "GET", "/api/kernels?token=s3cret")).code == 200
        r = await http(
            base(app), "GET", "/api/kernelspecs", headers={"Authorization": "Bearer s3cret"}
        )
        assert r.code == 200
        kernel_id = await start_kernel(base(app), token="s3cret")
        with pytest.raises(Exception, match="403"):
            await WSKernelClient.connect(base(app), kernel_id)
        client = await WSKernelClient.connect(base(app), kernel_id, token="s3cret")
        assert (await client.execute("1")).content["status"] == "ok"
        client.close()
        assert (await http(base(app), "GET", "/healthz")).code == 200  # probes need no token
    finally:
        await app.stop_async()


async def test_empty_token_header_is_fine_when_auth_is_off(base_url):
    r = await http(base_url, "GET", "/api/kernels", headers={"Authorization": "token "})
    assert r.code == 200


async def test_max_kernels_global_and_per_user(tmp_path):
    app = await start_gateway(tmp_path, max_kernels=2, max_kernels_per_user=1)
    try:
        body = {"name": "kcr-python", "env": {"KERNEL_USERNAME": "ann"}}
        assert (await http(base(app), "POST", "/api/kernels", body)).code == 201
        r = await http(base(app), "POST", "/api/kernels", body)
        assert r.code == 403
        assert "ann" in r.json()["message"]
        other = {"name": "kcr-python", "env": {"KERNEL_USERNAME": "bob"}}
        assert (await http(base(app), "POST", "/api/kernels", other)).code == 201
        r = await http(base(app), "POST", "/api/kernels", {"name": "kcr-python"})
        assert r.code == 403
        assert "maximum of 2" in r.json()["message"]
    finally:
        await app.stop_async()


async def test_idle_kernels_are_culled(tmp_path):
    app = await start_gateway(
        tmp_path,
        manager={"cull_idle_timeout": 1, "cull_interval": 1, "cull_action": "shutdown"},
    )
    try:
        kernel_id = await start_kernel(base(app))
        for _ in range(200):
            if (await http(base(app), "GET", f"/api/kernels/{kernel_id}")).code == 404:
                break
            await asyncio.sleep(0.05)
        assert (await http(base(app), "GET", f"/api/kernels/{kernel_id}")).code == 404
    finally:
        await app.stop_async()


# -- the sandbox, as user code sees it ------------------------------------------------


@pytest.fixture
def host_listener():
    """A TCP server on the host's loopback that user code must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


async def run(base_url, code: str, kernel_id: str | None = None):
    owned = kernel_id is None
    kernel_id = kernel_id or await start_kernel(base_url)
    client = await WSKernelClient.connect(base_url, kernel_id)
    try:
        return await client.execute(code)
    finally:
        client.close()
        if owned:
            await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")


async def test_user_code_cannot_reach_the_gateway_or_host_listeners(
    gateway, base_url, host_listener
):
    code = f"""
import socket
for port in ({gateway.port}, {host_listener}):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        print(port, "reachable")
    except OSError as e:
        print(port, "blocked")
"""
    r = await run(base_url, code)
    assert r.stdout == f"{gateway.port} blocked\n{host_listener} blocked\n"


@pytest.fixture
def host_tmp_secret():
    path = Path("/tmp") / f"kcr-secret-{uuid.uuid4().hex}"
    path.write_text("top secret")
    yield str(path)
    path.unlink()


async def test_user_code_cannot_read_the_hosts_tmp(base_url, host_tmp_secret):
    r = await run(base_url, f"import os; print(os.path.exists({host_tmp_secret!r}))")
    assert r.stdout == "False\n"


async def test_user_code_cannot_see_host_processes(base_url):
    r = await run(
        base_url,
        "import os; print(sorted(int(p) for p in os.listdir('/proc') "
        "if p.isdigit())[:1], os.getuid())",
    )
    pids, uid = r.stdout.split("] ")
    assert int(uid) != 0
    assert pids == "[1"  # its own PID namespace: bwrap is init
    r = await run(
        base_url, "import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)"
    )
    assert r.stdout == "True\n"


async def test_user_code_cannot_write_outside_its_workspace(base_url):
    code = """
import os
results = []
for path in ("/usr/kcr-test", "/etc/kcr-test", "/kcr-test", os.path.expanduser("~/../kcr-test")):
    try:
        open(path, "w").write("x")
        results.append("wrote " + path)
    except OSError:
        results.append("refused")
open("inside.txt", "w").write("ok")
print(results.count("refused"), os.getcwd(), open("inside.txt").read())
"""
    r = await run(base_url, code)
    assert r.stdout == "4 /work ok\n"


async def test_kernels_cannot_see_each_others_files(gateway, base_url):
    first = await start_kernel(base_url)
    try:
        await run(base_url, "open('mine.txt', 'w').write('private')", kernel_id=first)
        workspace = str(gateway.kernel_manager.get_kernel(first).pod.meta["workspace"])
        code = f"""
import os
print(os.listdir('.'), os.path.exists({workspace!r}), os.path.exists({gateway.data_dir!r}))
"""
        r = await run(base_url, code)
        assert r.stdout == "[] False False\n"
    finally:
        await http(base_url, "DELETE", f"/api/kernels/{first}")

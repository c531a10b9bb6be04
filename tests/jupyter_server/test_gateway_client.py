"""Jupyter Server's GatewayClient against kcr-gateway, through the server's own API.

Everything goes the way a front end goes: REST and the kernel WebSocket of a
real ``jupyter server --gateway-url=...``, which in turn talks to a real
``kcr-gateway`` with sandboxed pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from kcr_kernels.kernelspecs import kernelspecs_dir
from tests.jupyter_server.client import APIError, KernelChannels, poll_until


@contextlib.asynccontextmanager
async def notebook(api):
    """A session (notebook + kernel) on the server and a WebSocket to its kernel."""
    model = await api.start_session()
    channels = await KernelChannels.open(api, model["kernel"]["id"], model["id"])
    try:
        yield model, channels
    finally:
        channels.close()
        with contextlib.suppress(APIError):
            await api.call("DELETE", f"/api/sessions/{model['id']}")


async def test_kernelspecs_and_logos_come_from_the_gateway(api, gateway_api):
    await api.call("GET", "/api/kernelspecs")
    # Jupyter Server adopts the gateway's default kernel from its first fetch on.
    specs = await api.call("GET", "/api/kernelspecs")
    assert specs["default"] == "kcr-python"
    assert list(specs["kernelspecs"]) == ["kcr-python"]
    spec = specs["kernelspecs"]["kcr-python"]
    assert spec["spec"]["display_name"] == "Python 3 (kcr)"
    assert spec["spec"]["language"] == "python"

    resources = spec["resources"]
    assert set(resources) >= {"logo-32x32", "logo-64x64", "logo-svg"}
    for name, filename in [("logo-64x64", "logo-64x64.png"), ("logo-svg", "logo-svg.svg")]:
        # The server rewrote the gateway's URL to its own, and proxies the file.
        assert resources[name] == f"/kernelspecs/kcr-python/{filename}"
        status, content_type, body = await api.raw(resources[name])
        assert status == 200, f"{resources[name]} -> {status}"
        assert body == (kernelspecs_dir() / "kcr-python" / filename).read_bytes()
        assert content_type.startswith("image/png" if filename.endswith("png") else "image/svg")

    # (Jupyter Server 2.x turns a missing resource into a 500 of its own; the gateway says 404.)
    status, _, _ = await gateway_api.raw("/kernelspecs/kcr-python/no-such-logo.png")
    assert status == 404


async def test_session_runs_cells_and_returns_outputs(api, gateway_api):
    async with notebook(api) as (model, ch):
        kernel_id = model["kernel"]["id"]
        assert model["kernel"]["name"] == "kcr-python"
        assert kernel_id in await api.kernel_ids()
        assert kernel_id in [k["id"] for k in await gateway_api.call("GET", "/api/kernels")]

        info = await ch.request("kernel_info_request")
        assert info["content"]["status"] == "ok"
        assert info["content"]["language_info"]["name"] == "python"

        run = await ch.execute("print(1 + 1)")
        assert run.reply["status"] == "ok"
        assert run.stdout == "2\n"
        assert run.of_type("execute_input")[0]["code"] == "print(1 + 1)"

        run = await ch.execute("x = 20\nx * 2 + 2")
        assert run.of_type("execute_result")[0]["data"]["text/plain"] == "42"

        run = await ch.execute(
            "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))"
        )
        assert run.of_type("display_data")[0]["data"]["text/html"] == "<b>bold</b>"

        run = await ch.execute("1 / 0")
        assert run.reply["status"] == "error"
        assert run.of_type("error")[0]["ename"] == "ZeroDivisionError"

        complete = await ch.request("complete_request", {"code": "import o", "cursor_pos": 8})
        assert "os" in complete["content"]["matches"]

        model_now = await api.call("GET", f"/api/kernels/{kernel_id}")
        assert model_now["execution_state"] == "idle"


async def test_kernel_env_forwarding(api):
    async with notebook(api) as (_, ch):
        run = await ch.execute(
            "import os, json\n"
            "names = ['KERNEL_USERNAME', 'KERNEL_PROJECT', 'KERNEL_LAUNCH_TIMEOUT',\n"
            "         'ALLOWED_VAR', 'CLIENT_ONLY_VAR', 'KCR_TEST_SECRET']\n"
            "print(json.dumps({n: os.environ.get(n) for n in names}))"
        )
    seen = json.loads(run.stdout)
    assert seen == {
        "KERNEL_USERNAME": "alice",
        "KERNEL_PROJECT": "apollo",
        "KERNEL_LAUNCH_TIMEOUT": "25",
        "ALLOWED_VAR": "allowed-value",  # allowed by the server and the gateway
        "CLIENT_ONLY_VAR": None,  # the gateway's env_whitelist does not list it
        "KCR_TEST_SECRET": None,  # never sent: not KERNEL_* nor allowed
    }


async def test_interrupt_from_rest_and_from_the_control_channel(api):
    async with notebook(api) as (model, ch):
        kernel_id = model["kernel"]["id"]

        # 1. REST: POST /api/kernels/{id}/interrupt on the server.
        msg_id = ch.start_execute("import time\nfor _ in range(600): time.sleep(0.1)")
        await ch.wait_busy(msg_id)
        await api.call("POST", f"/api/kernels/{kernel_id}/interrupt")
        run = await ch.finish_execute(msg_id, timeout=30)
        assert run.reply["status"] == "error"
        assert run.reply["ename"] == "KeyboardInterrupt"

        # 2. interrupt_request on the control channel (what JupyterLab sends for
        #    kernelspecs with interrupt_mode "message", like kcr-python).
        msg_id = ch.start_execute("import time\nfor _ in range(600): time.sleep(0.1)")
        await ch.wait_busy(msg_id)
        reply = await ch.request("interrupt_request", channel="control")
        assert reply["content"]["status"] == "ok"
        run = await ch.finish_execute(msg_id, timeout=30)
        assert run.reply["ename"] == "KeyboardInterrupt"

        # The kernel is still usable afterwards.
        assert (await ch.execute("print('alive')")).stdout == "alive\n"


async def test_restart_gives_a_fresh_namespace_on_the_same_websocket(api, gateway_api):
    async with notebook(api) as (model, ch):
        kernel_id = model["kernel"]["id"]
        await ch.execute("secret = 'before restart'")
        before = await gateway_api.call("GET", "/api/kcr/pools")

        restarted = await api.call("POST", f"/api/kernels/{kernel_id}/restart")
        assert restarted["id"] == kernel_id
        # A requested restart says "starting" (like a new kernel), never "restarting":
        # JupyterLab takes "restarting" for an automatic restart after a crash.
        await ch.wait_for(
            lambda m: (
                m.get("msg_type") == "status" and m["content"]["execution_state"] == "starting"
            ),
            what="starting status",
        )

        run = await ch.execute("print(secret)")
        assert run.reply["status"] == "error"
        assert run.reply["ename"] == "NameError"
        assert (await ch.execute("print('fresh')")).stdout == "fresh\n"
        assert kernel_id in await api.kernel_ids()
        after = await gateway_api.call("GET", "/api/kcr/pools")
        assert after["python"]["leased"] == before["python"]["leased"]
        assert "restarting" not in [
            m["content"]["execution_state"] for m in ch.received if m.get("msg_type") == "status"
        ]


async def test_restart_through_shutdown_request_on_the_websocket(api):
    async with notebook(api) as (_, ch):
        await ch.execute("y = 1")
        reply = await ch.request("shutdown_request", {"restart": True}, channel="control")
        assert reply["content"] == {"status": "ok", "restart": True}
        run = await poll_until(
            lambda: ch.execute("print('y' in dir())"), what="a cell after the restart"
        )
        assert run.stdout == "False\n"


async def test_websocket_reconnect_keeps_the_kernel(api):
    model = await api.start_session()
    kernel_id = model["kernel"]["id"]
    try:
        ch = await KernelChannels.open(api, kernel_id, model["id"])
        await ch.execute("counter = 41")
        ch.close()

        await poll_until(
            lambda: _connections(api, kernel_id, 0), what="the server seeing the socket close"
        )
        ch = await KernelChannels.open(api, kernel_id, model["id"])
        try:
            run = await ch.execute("counter += 1\nprint(counter)")
            assert run.stdout == "42\n"
        finally:
            ch.close()
    finally:
        await api.call("DELETE", f"/api/sessions/{model['id']}")


async def _connections(api, kernel_id: str, expected: int) -> bool:
    return (await api.call("GET", f"/api/kernels/{kernel_id}"))["connections"] == expected


async def test_shutdown_removes_the_kernel_everywhere(api, gateway_api):
    model = await api.start_session()
    kernel_id = model["kernel"]["id"]
    await api.call("DELETE", f"/api/sessions/{model['id']}")
    assert kernel_id not in await api.kernel_ids()
    assert kernel_id not in [k["id"] for k in await gateway_api.call("GET", "/api/kernels")]
    with pytest.raises(APIError) as e:
        await gateway_api.call("GET", f"/api/kernels/{kernel_id}")
    assert e.value.code == 404


async def test_kernel_deleted_on_the_gateway_disappears_from_the_server(api, gateway_api):
    kernel = await api.call("POST", "/api/kernels", {"name": "kcr-python"})
    kernel_id = kernel["id"]
    assert kernel_id in await api.kernel_ids()

    await gateway_api.call("DELETE", f"/api/kernels/{kernel_id}")

    assert kernel_id not in await api.kernel_ids()
    with pytest.raises(APIError) as e:
        await api.call("GET", f"/api/kernels/{kernel_id}")
    assert e.value.code == 404


async def test_concurrent_notebooks_are_isolated(api):
    async with notebook(api) as (_, a), notebook(api) as (_, b):
        await asyncio.gather(a.execute("who = 'a'"), b.execute("who = 'b'"))
        ra, rb = await asyncio.gather(a.execute("print(who)"), b.execute("print(who)"))
        assert (ra.stdout, rb.stdout) == ("a\n", "b\n")


# -- what JupyterLab users meet in the Python runner ----------------------------------------


async def test_matplotlib_inline_magic(api):
    async with notebook(api) as (_, ch):
        run = await ch.execute(
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
        )
    assert run.reply["status"] == "ok", run.reply
    assert "image/png" in run.of_type("display_data")[0]["data"]


async def test_interrupt_traceback_shows_only_user_code(api):
    async with notebook(api) as (model, ch):
        msg_id = ch.start_execute("import time\ntime.sleep(30)")
        await ch.wait_busy(msg_id)
        await api.call("POST", f"/api/kernels/{model['kernel']['id']}/interrupt")
        run = await ch.finish_execute(msg_id, timeout=30)
    traceback = "\n".join(run.of_type("error")[0]["traceback"])
    assert "kcr_runner" not in traceback, traceback

"""The Kernel Gateway REST API, as a client sees it."""

import re

import pytest

from tests.gateway.conftest import http, start_kernel

pytestmark = pytest.mark.asyncio(loop_scope="module")

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def test_api_root_reports_versions(base_url):
    r = await http(base_url, "GET", "/api")
    assert r.code == 200
    assert r.json()["gateway"] == "kcr-gateway"


async def test_kernelspecs_list_the_pool_languages_with_logos(base_url):
    r = await http(base_url, "GET", "/api/kernelspecs")
    assert r.code == 200
    specs = r.json()
    assert specs["default"] == "kcr-python"
    python = specs["kernelspecs"]["kcr-python"]
    assert python["spec"]["language"] == "python"
    assert python["spec"]["display_name"]
    logo = await http(base_url, "GET", python["resources"]["logo-64x64"])
    assert logo.code == 200
    assert logo.body.startswith(b"\x89PNG")
    one = await http(base_url, "GET", "/api/kernelspecs/kcr-python")
    assert one.code == 200 and one.json()["name"] == "kcr-python"


async def test_unknown_kernelspec_is_a_json_404(base_url):
    r = await http(base_url, "GET", "/api/kernelspecs/kcr-cobol")
    assert r.code == 404
    assert "message" in r.json()
    r = await http(base_url, "POST", "/api/kernels", {"name": "kcr-cobol"})
    assert r.code == 404
    assert "kcr-cobol" in r.json()["message"]


async def test_kernel_lifecycle(base_url):
    r = await http(base_url, "POST", "/api/kernels", {"name": "kcr-python"})
    assert r.code == 201
    model = r.json()
    assert set(model) >= {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["name"] == "kcr-python"
    assert ISO.match(model["last_activity"]), model["last_activity"]
    assert r.headers["Location"] == f"/api/kernels/{model['id']}"

    listed = await http(base_url, "GET", "/api/kernels")
    assert model["id"] in [k["id"] for k in listed.json()]
    got = await http(base_url, "GET", f"/api/kernels/{model['id']}")
    assert got.json()["execution_state"] == "idle"

    assert (await http(base_url, "POST", f"/api/kernels/{model['id']}/interrupt")).code == 204
    restarted = await http(base_url, "POST", f"/api/kernels/{model['id']}/restart")
    assert restarted.code == 200 and restarted.json()["id"] == model["id"]

    assert (await http(base_url, "DELETE", f"/api/kernels/{model['id']}")).code == 204
    gone = await http(base_url, "GET", f"/api/kernels/{model['id']}")
    assert gone.code == 404
    assert model["id"] in gone.json()["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/kernels/00000000-0000-0000-0000-000000000000"),
        ("DELETE", "/api/kernels/00000000-0000-0000-0000-000000000000"),
        ("POST", "/api/kernels/00000000-0000-0000-0000-000000000000/interrupt"),
        ("POST", "/api/kernels/00000000-0000-0000-0000-000000000000/restart"),
        ("GET", "/api/no/such/thing"),
    ],
)
async def test_unknown_kernels_and_routes_are_json_404s(base_url, method, path):
    r = await http(base_url, method, path)
    assert r.code == 404
    assert r.json()["message"]


async def test_a_body_that_is_not_json_is_a_400(base_url):
    r = await http(base_url, "POST", "/api/kernels", b"{not json")
    assert r.code == 400
    assert r.json()["message"]
    r = await http(base_url, "POST", "/api/kernels", {"name": "kcr-python", "env": ["x"]})
    assert r.code == 400


async def test_pool_health_ready_and_metrics_endpoints(base_url):
    pools = (await http(base_url, "GET", "/api/kcr/pools")).json()
    assert set(pools["python"]) >= {"warm", "leased", "starting", "target"}
    assert (await http(base_url, "GET", "/healthz")).json()["status"] == "ok"
    ready = await http(base_url, "GET", "/readyz")
    assert ready.code == 200 and ready.json()["status"] == "ready"
    kernel_id = await start_kernel(base_url)
    metrics = (await http(base_url, "GET", "/metrics")).body.decode()
    assert 'kcr_kernel_starts_total{language="python"}' in metrics
    assert "kcr_kernel_start_seconds_bucket" in metrics
    assert 'kcr_pool_pods{language="python",state="warm"}' in metrics
    await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")


async def test_kernel_env_passes_kernel_variables_only(base_url):
    from tests.gateway.conftest import WSKernelClient

    kernel_id = await start_kernel(
        base_url,
        name="kcr-python",
        env={"KERNEL_USERNAME": "alice", "KERNEL_EXTRA": "x", "PATH": "/evil", "SECRET": "s"},
    )
    client = await WSKernelClient.connect(base_url, kernel_id)
    try:
        r = await client.execute(
            "import os; print(os.environ.get('KERNEL_USERNAME'), os.environ.get('KERNEL_EXTRA'),"
            " os.environ.get('SECRET'), os.environ['PATH'] == '/evil')"
        )
        assert r.stdout.strip() == "alice x None False"
    finally:
        client.close()
        await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")

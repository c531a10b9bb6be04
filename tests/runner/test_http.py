"""Startup contract, authentication, /healthz and /env."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import websockets

from .conftest import stream_text


def test_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KCR_RUNNER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "kcr_runner", "--port", "0", "--workspace", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "KCR_RUNNER_TOKEN" in result.stderr


def test_ready_line(shared_runner):
    assert shared_runner.ready["host"] == "127.0.0.1"
    assert shared_runner.ready["port"] > 0
    assert shared_runner.ready["pid"] == shared_runner.proc.pid


async def test_every_endpoint_needs_the_token(shared_runner):
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/kernel_info"),
        ("POST", "/interrupt"),
        ("GET", "/files"),
        ("GET", "/files/x"),
        ("PUT", "/files/x"),
        ("POST", "/state/snapshot"),
        ("POST", "/env"),
        ("GET", "/nope"),
    ]:
        response = await shared_runner.http(method, path, token="wrong")
        assert response.code == 401, (method, path)
        assert json.loads(response.body)["reason"] == "unauthorized"
    try:
        await websockets.connect(shared_runner.ws_url, additional_headers={"Authorization": "x"})
        raise AssertionError("the WebSocket upgrade was accepted without a token")
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 401


async def test_healthz_reports_idle_worker(shared_runner):
    body = json.loads((await shared_runner.http("GET", "/healthz")).body)
    assert body["status"] == "ok"
    assert body["language"] == "python"
    assert body["worker"] == "alive"
    assert body["busy"] is False


async def test_env_is_merged_and_the_token_is_hidden(shared_runner, channel):
    response = await shared_runner.http("POST", "/env", body=json.dumps({"KERNEL_ID": "k-1"}))
    assert response.code == 204
    code = "import os\nprint(os.environ['KERNEL_ID'], 'KCR_RUNNER_TOKEN' in os.environ)"
    events, _ = await channel.execute(code)
    assert stream_text(events) == "k-1 False\n"
    bad = await shared_runner.http("POST", "/env", body=json.dumps({"KERNEL_N": 5}))
    assert bad.code == 400
    assert json.loads(bad.body)["reason"] == "bad_env"
    assert (await shared_runner.http("POST", "/env", body="{")).code == 400


async def test_unknown_endpoint_is_a_json_404(shared_runner):
    response = await shared_runner.http("GET", "/does-not-exist")
    assert response.code == 404
    assert json.loads(response.body)["reason"] == "not_found"

"""DELETE always frees the kernel's pod and answers JSON, whatever is queued on the kernel."""

import asyncio
import json
import os

import pytest

from tests.fakes.recording_listener import RecordingListener
from tests.gateway.conftest import WSKernelClient, http, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _process_gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone for our purpose (nothing runs); its parent reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _malformed(client: WSKernelClient, kind: str) -> dict:
    msg = client.make("execute_request", {"code": "1+1"})
    if kind == "msg_type_number":
        msg["header"]["msg_type"] = 5
    elif kind == "no_msg_id_or_session":
        del msg["header"]["msg_id"], msg["header"]["session"]
    elif kind == "content_not_an_object":
        msg["content"] = ["x"]
    elif kind == "parent_header_not_an_object":
        msg["parent_header"] = "x"
    return msg


@pytest.mark.parametrize(
    "kind",
    [
        "msg_type_number",
        "no_msg_id_or_session",
        "content_not_an_object",
        "parent_header_not_an_object",
    ],
)
async def test_delete_with_a_malformed_request_queued_frees_the_pod(gateway, base_url, kind):
    kernel_id = await start_kernel(base_url)
    client = await WSKernelClient.connect(base_url, kernel_id)
    try:
        pod = gateway.kernel_manager.get_kernel(kernel_id).pod
        process = pod.meta.get("process")
        pids = [process.pid if process else None, pod.meta.get("runner_pid")]
        running = client.send(
            client.make("execute_request", {"code": "import time; time.sleep(60)"})
        )
        await wait_for(
            lambda: any(m["msg_type"] == "execute_input" for m in running.iopub),
            30,
            "the long cell started",
        )
        # The WebSocket edge refuses it (a BadMessage reply, or a log line where no reply
        # can be addressed) ...
        await client.ws.write_message(json.dumps(_malformed(client, kind)))
        # ... and one that got past the edge (defence in depth) is queued behind the cell.
        session = gateway.kernel_manager.get_kernel(kernel_id).session
        session._queue.put_nowait((RecordingListener(), _malformed(client, kind)))

        r = await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")
        assert r.code == 204, r.body
        assert b"Traceback" not in r.body

        assert pod.name not in gateway.pool._pools["python"].leased
        for pid in pids:
            await wait_for(lambda pid=pid: _process_gone(pid), 10, f"runner process {pid} ended")
        again = await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")
        assert again.code == 404
        assert kernel_id in again.json()["message"]
        assert "traceback" not in again.json()
        assert kernel_id not in gateway.kernel_manager
    finally:
        client.close()
        await asyncio.sleep(0)


async def test_an_unexpected_error_in_an_api_handler_is_json_without_a_traceback(
    gateway, base_url, monkeypatch
):
    async def broken(*_a, **_kw):
        raise RuntimeError("secret internals")

    kernel_id = await start_kernel(base_url)
    try:
        monkeypatch.setattr(gateway.kernel_manager, "kernel_model", broken)
        r = await http(base_url, "GET", f"/api/kernels/{kernel_id}")
        assert r.code == 500
        body = r.json()
        assert set(body) == {"reason", "message"}
        assert "Traceback" not in r.body.decode() and "secret internals" not in r.body.decode()
    finally:
        monkeypatch.undo()
        await http(base_url, "DELETE", f"/api/kernels/{kernel_id}")

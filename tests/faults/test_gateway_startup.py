"""A second gateway, a stale lock, bad settings: one clear line, and no kernel of the running
gateway is touched. Real gateway processes (tests/faults/gateway_procs.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kcr_gateway.app import KCRGateway, StartupError
from traitlets.config import Config

from tests.faults.gateway_procs import GatewayProcess
from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel

pytestmark = pytest.mark.asyncio(loop_scope="module")


def error_lines(gateway: GatewayProcess) -> list[str]:
    return [line for line in gateway.lines if line.startswith("kcr-gateway: error:")]


def assert_one_clear_line(gateway: GatewayProcess, code: int, *parts: str) -> None:
    assert code == 1, gateway.stderr
    assert "Traceback" not in gateway.stderr
    (line,) = error_lines(gateway)
    for part in parts:
        assert part in line, line
    assert "left by a previous gateway" not in gateway.stderr


async def test_a_second_gateway_on_the_same_data_folder_leaves_the_first_alone(tmp_path):
    data = tmp_path / "kcr"
    first = await asyncio.to_thread(GatewayProcess(data).start)
    try:
        kernel_id = await start_kernel(first.base)
        client = await WSKernelClient.connect(first.base, kernel_id)
        assert (await client.execute("x = 41")).content["status"] == "ok"
        pods = set(os.listdir(data / "pods"))

        other_port = GatewayProcess(data)  # the default-data-folder case: another port
        same_port = GatewayProcess(data, port=first.port)  # the port is checked first
        codes = await asyncio.gather(
            asyncio.to_thread(other_port.run_to_exit), asyncio.to_thread(same_port.run_to_exit)
        )
        assert_one_clear_line(
            other_port,
            codes[0],
            f"another kcr-gateway (pid {first.pid}) is using the data folder {data}",
            "--data-dir",
        )
        assert_one_clear_line(
            same_port, codes[1], f"port {first.port} on 127.0.0.1 is already in use"
        )

        r = await client.execute("print(x + 1)")
        assert r.content["status"] == "ok" and r.stdout == "42\n"
        assert "[kcr]" not in r.stderr  # same pod: nothing moved, nothing was killed
        assert pods <= set(os.listdir(data / "pods"))
        client.close()
    finally:
        first.kill()


async def startup_error(tmp_path, **traits) -> str:
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(traits.pop("data_dir", tmp_path / "kcr"))
    for name, value in traits.items():
        setattr(config.KCRGateway, name, value)
    app = KCRGateway(config=config)
    try:
        with pytest.raises(StartupError) as error:
            await app.start_async()
    finally:
        await app.stop_async()
    return str(error.value)


async def test_a_lock_file_left_by_a_dead_gateway_does_not_block(tmp_path):
    data = tmp_path / "kcr"
    data.mkdir()
    (data / "gateway.lock").write_text("999999999\n")  # a pid no process has
    app = await start_gateway(tmp_path, pools={"python": {"warm": 1}})
    try:
        assert (data / "gateway.lock").read_text().strip() == str(os.getpid())
        kernel_id = await start_kernel(f"http://127.0.0.1:{app.port}")
        r = await http(f"http://127.0.0.1:{app.port}", "GET", f"/api/kernels/{kernel_id}")
        assert r.code == 200
        # and the folder is this gateway's now: another one is refused
        message = await startup_error(tmp_path)
        assert f"another kcr-gateway (pid {os.getpid()}) is using the data folder {data}" in message
    finally:
        await app.stop_async()
    assert (data / "gateway.lock").read_text() == ""  # released at shutdown


async def test_a_pool_for_an_unknown_language_stops_the_start(tmp_path):
    message = await startup_error(tmp_path, pools={"cobol": {"warm": 1}})
    assert "unknown language(s) 'cobol'" in message
    assert "known languages:" in message and "python" in message
    assert not (tmp_path / "kcr" / "pods").exists()


async def test_a_data_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "kcr"
    message = await startup_error(tmp_path, data_dir=data)
    assert f"the data folder {data} is not usable" in message and "--data-dir" in message


class _NotRedis(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


async def test_a_store_url_that_answers_but_is_not_redis_is_one_line(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotRedis)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"redis://127.0.0.1:{server.server_address[1]}/0"
        message = await startup_error(tmp_path, kernel_store_url=url)
        assert "answers but is not a Redis server" in message
        assert "check kernel_store_url" in message
    finally:
        server.shutdown()
        server.server_close()

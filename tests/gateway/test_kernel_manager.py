"""KCRKernelManager and RemoteKernel on doubles at the pod and runner seams (milliseconds each).

The pool is the real PodPool over FakePodBackend; every runner is a
FakeRunnerClient; the kernel store is the real SQLite store. The same
behaviours run end to end against real sandboxed runners in test_durability.py
and test_shutdown.py.
"""

from __future__ import annotations

import asyncio

import pytest
from kcr_gateway.kernels import KCRKernelManager, KernelState
from kcr_gateway.kernels.errors import UnknownKernel
from tornado import web
from traitlets.config import Config

from kcr_kernels.kernelspecs import KCRKernelSpecManager
from kcr_kernels.pool import PodPool, PoolConfig
from kcr_kernels.stores import open_kernel_store
from tests.fakes.fake_pod_backend import FakePodBackend
from tests.fakes.fake_runner_client import FakeRunnerClient


class Listener:
    """A KernelListener that keeps every message it is sent."""

    def __init__(self):
        self.messages: list[dict] = []

    def send(self, channel: str, msg: dict) -> None:
        self.messages.append(msg)

    def of(self, parent_id: str) -> list[dict]:
        return [m for m in self.messages if m["parent_header"].get("msg_id") == parent_id]

    def reply(self, parent_id: str) -> dict | None:
        return next((m for m in self.of(parent_id) if m["channel"] == "shell"), None)


def request(msg_type: str, content: dict, msg_id: str) -> dict:
    header = {"msg_id": msg_id, "msg_type": msg_type, "session": "s", "username": "t"}
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content}


async def execute(kernel, listener: Listener, code: str, msg_id: str) -> dict:
    if listener not in kernel.session.listeners:
        kernel.session.add_listener(listener)
    kernel.session.handle(listener, request("execute_request", {"code": code}, msg_id))
    for _ in range(1000):
        reply = listener.reply(msg_id)
        idle = any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
            for m in listener.of(msg_id)
        )
        if reply is not None and idle:
            return reply
        await asyncio.sleep(0.001)
    raise AssertionError(f"no reply + idle for {code!r}")


@pytest.fixture
async def parts(tmp_path):
    backend = FakePodBackend()
    pool = PodPool(backend, [PoolConfig("python", warm=1)], start_timeout=5)
    await pool.start()
    await pool.wait_warm(5)
    store = open_kernel_store(f"sqlite:///{tmp_path}/kcr.db")
    config = Config()
    config.KCRCheckpointer.checkpoint_delay = 3600.0  # tests checkpoint explicitly
    km = KCRKernelManager(
        config=config,
        pool=pool,
        store=store,
        kernel_spec_manager=KCRKernelSpecManager(languages=["python"]),
        runner_factory=FakeRunnerClient.for_pod,
    )
    yield km, backend
    await km.detach_all()
    await pool.stop()
    await store.close()


async def test_a_lost_pod_is_replaced_with_the_last_checkpoint(parts):
    km, backend = parts
    kernel = km.get_kernel(await km.start_kernel("kcr-python"))
    listener = Listener()
    kernel.session.add_listener(listener)
    assert (await execute(kernel, listener, "x = 41", "a"))["content"]["status"] == "ok"
    assert (await km.checkpointer.checkpoint(kernel)).saved
    first_pod = kernel.pod

    kernel.runner.die()
    assert kernel.state is KernelState.LOST
    assert kernel.model()["execution_state"] == "hibernated"  # no pod until the next request

    reply = await execute(kernel, listener, "x + 1", "b")
    assert reply["content"]["status"] == "ok"
    assert kernel.state is KernelState.ATTACHED and kernel.pod is not first_pod
    results = [m for m in listener.of("b") if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "42"
    stderr = "".join(m["content"]["text"] for m in listener.messages if m["msg_type"] == "stream")
    assert "[kcr] The kernel moved to a new pod (its pod stopped). State restored" in stderr
    await asyncio.sleep(0)  # the lost pod's release runs in the kernel's task owner
    await kernel.tasks.drain()
    assert first_pod.name in backend.deleted


async def test_a_cell_running_when_the_pod_dies_ends_with_kernel_died(parts):
    km, _backend = parts
    kernel = km.get_kernel(await km.start_kernel("kcr-python"))
    listener = Listener()
    kernel.session.handle(listener, request("execute_request", {"code": "BLOCK"}, "a"))
    for _ in range(100):
        if kernel.runner.blocked:
            break
        await asyncio.sleep(0.001)
    kernel.runner.die()
    for _ in range(100):
        if listener.reply("a"):
            break
        await asyncio.sleep(0.001)
    assert listener.reply("a")["content"]["ename"] == "KernelDied"
    assert kernel.state is KernelState.LOST


async def test_a_request_its_pod_never_got_runs_on_the_next_pod(parts):
    km, _backend = parts
    kernel = km.get_kernel(await km.start_kernel("kcr-python"))
    listener = Listener()
    assert (await execute(kernel, listener, "x = 41", "a"))["content"]["status"] == "ok"
    assert (await km.checkpointer.checkpoint(kernel)).saved
    kernel.runner.acks = False  # the next request is in flight when the pod dies
    old_runner = kernel.runner
    kernel.session.handle(listener, request("execute_request", {"code": "x + 1"}, "b"))
    for _ in range(100):
        if old_runner.unreached:
            break
        await asyncio.sleep(0.001)
    old_runner.die()
    reply = await execute(kernel, listener, "x + 2", "c")
    assert reply["content"]["status"] == "ok"
    assert listener.reply("b")["content"]["status"] == "ok"
    results = [m for m in listener.of("b") if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "42"
    assert kernel.runner is not old_runner and old_runner.unreached == ["x + 1"]


@pytest.mark.parametrize("bad", ["msg_type_number", "session_close_raises"])
async def test_shutdown_always_frees_the_pod(parts, monkeypatch, bad):
    km, backend = parts
    kernel_id = await km.start_kernel("kcr-python")
    kernel = km.get_kernel(kernel_id)
    pod = kernel.pod
    listener = Listener()
    kernel.session.handle(listener, request("execute_request", {"code": "BLOCK"}, "a"))
    malformed = request("execute_request", {"code": "1"}, "b")
    if bad == "msg_type_number":
        malformed["header"]["msg_type"] = 5
    else:

        async def broken_close():
            raise RuntimeError("session close failed")

        monkeypatch.setattr(kernel.session, "close", broken_close)
    kernel.session.handle(listener, malformed)

    await km.shutdown_kernel(kernel_id)

    assert pod.name in backend.deleted
    assert km.pool.status()["python"]["leased"] == 0
    assert kernel_id not in km and kernel.state is KernelState.CLOSED
    assert await km.store.get_kernel(kernel_id) is None
    with pytest.raises(web.HTTPError) as e:
        await km.shutdown_kernel(kernel_id)
    assert e.value.status_code == 404


async def test_domain_errors_are_typed_and_rest_errors_are_http(parts):
    km, _backend = parts
    with pytest.raises(UnknownKernel) as e:
        await km.remove("00000000-0000-0000-0000-000000000000")
    assert e.value.kernel_id == "00000000-0000-0000-0000-000000000000"
    with pytest.raises(web.HTTPError) as http:
        await km.kernel_model("not a valid id!")
    assert http.value.status_code == 404
    with pytest.raises(web.HTTPError) as http:
        await km.start_kernel("kcr-cobol")
    assert http.value.status_code == 404 and "kcr-cobol" in http.value.log_message


async def test_the_culler_hibernates_idle_kernels_and_a_request_resumes_them(parts):
    km, backend = parts
    km.culler.cull_idle_timeout = 60
    kernel = km.get_kernel(await km.start_kernel("kcr-python"))
    listener = Listener()
    await execute(kernel, listener, "y = 'kept'", "a")
    pod = kernel.pod
    assert await km.culler.cull(km) == []  # not idle long enough
    kernel.last_activity -= 120
    assert await km.culler.cull(km) == [kernel.kernel_id]
    assert kernel.state is KernelState.HIBERNATED
    assert kernel.model()["execution_state"] == "hibernated"
    assert (await km.store.get_kernel(kernel.kernel_id))["state"] == "hibernated"
    assert pod.name in backend.deleted
    reply = await execute(kernel, listener, "y", "b")
    assert reply["content"]["status"] == "ok"
    results = [m for m in listener.of("b") if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "'kept'"

"""A cell sent at the instant its pod dies runs on the next pod; only a running cell ends with
KernelDied. Real gateway, real sandboxed runners, real signals.

To hit "the instant" every time, the runner is SIGSTOPped (it reads nothing), the cell is
sent, and then the runner's process group is SIGKILLed: the cell was written to the pod's
socket but the runner never acknowledged it.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_asyncio

from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory):
    app = await start_gateway(
        tmp_path_factory.mktemp("resend"),
        manager={"checkpoint_delay": 0.05},
        pools={"python": {"warm": 1}},
    )
    yield app
    await app.stop_async()


async def checkpointed(app, kernel_id: str) -> None:
    kernel = app.kernel_manager.get_kernel(kernel_id)
    await wait_for(lambda: not kernel.dirty and not kernel.checkpoint_lock.locked(), 30, "saved")


def runner_process(app, kernel_id: str):
    return app.kernel_manager.get_kernel(kernel_id).pod.meta["process"]


async def test_a_cell_the_dying_pod_never_got_runs_on_the_next_pod(gateway):
    base = f"http://127.0.0.1:{gateway.port}"
    kernel_id = await start_kernel(base)
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        assert (await client.execute("x = 41")).content["status"] == "ok"
        await checkpointed(gateway, kernel_id)
        kernel = gateway.kernel_manager.get_kernel(kernel_id)
        first_pod = kernel.pod
        process = runner_process(gateway, kernel_id)
        os.kill(process.pid, signal.SIGSTOP)
        entry = client.send(client.make("execute_request", {"code": "print(x + 1)"}))
        await wait_for(lambda: kernel.session._current is not None, 30, "cell sent to the pod")
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)

        await wait_for(lambda: entry.reply is not None, 60, "the cell's reply")
        assert entry.reply["content"]["status"] == "ok", entry.reply["content"]
        assert entry.stdout == "42\n"
        assert "[kcr] The kernel moved to a new pod (its pod stopped)" in entry.stderr
        assert kernel.pod is not first_pod
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")


async def test_a_cell_that_was_running_ends_with_kernel_died(gateway):
    base = f"http://127.0.0.1:{gateway.port}"
    kernel_id = await start_kernel(base)
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        entry = client.send(
            client.make(
                "execute_request", {"code": "import time; print('on', flush=True); time.sleep(60)"}
            )
        )
        await wait_for(lambda: entry.stdout == "on\n", 60, "the cell running")
        process = runner_process(gateway, kernel_id)
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        await wait_for(lambda: entry.reply is not None, 60, "the cell's reply")
        assert entry.reply["content"]["ename"] == "KernelDied"
        r = await client.execute("print('next')")  # once, not twice: nothing was re-sent
        assert r.stdout == "next\n"
        assert entry.stdout == "on\n"
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")

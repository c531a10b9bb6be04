"""LocalBackend lifecycle with real runner processes: start, fail, delete, refuse, clean up."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from kcr_kernels.backends.base import PodStartError
from kcr_kernels.backends.local import LocalBackend
from kcr_kernels.backends.sandbox import SandboxUnavailable
from tests.sandbox.sandbox_helpers import FAKE_RUNNER_COMMAND, needs_bwrap, run_in_pod, until


@needs_bwrap
async def test_pod_lifecycle(make_backend):
    backend = await make_backend()
    pod = await backend.create("python")
    assert pod.url is None
    assert await backend.list("python") == [pod]
    await backend.wait_ready(pod, 30)
    assert pod.url.startswith("http://127.0.0.1:")
    assert await backend.alive(pod) and await backend.healthy(pod)
    workspace = pod.meta["workspace"]
    assert workspace.is_dir()
    proc = pod.meta["process"]
    await backend.delete(pod)
    assert proc.returncode is not None  # reaped
    assert not workspace.parent.exists()
    assert not await backend.alive(pod)
    assert await backend.list() == []
    await backend.delete(pod)  # idempotent


@needs_bwrap
async def test_delete_leaves_no_sandbox_process(make_backend):
    backend = await make_backend()
    pod = await backend.wait_ready(await backend.create("python"), 30)
    result = await run_in_pod(pod, "import os; print(os.getppid())")
    assert result["rc"] == 0
    cgroup = pod.meta.get("cgroup")
    await backend.delete(pod)
    pgrep = await asyncio.create_subprocess_exec(
        "pgrep", "-f", str(pod.meta["workspace"]), stdout=asyncio.subprocess.PIPE
    )
    assert (await pgrep.communicate())[0] == b""
    if cgroup is not None:
        assert not any(folder.exists() for folder in cgroup.folders)


async def test_runner_crash_is_a_clear_error(make_backend):
    backend = await make_backend(
        sandbox=False, runner_args=["--mode", "crash"], runner_command=FAKE_RUNNER_COMMAND
    )
    pod = await backend.create("python")
    with pytest.raises(PodStartError) as err:
        await backend.wait_ready(pod, 10)
    message = str(err.value)
    assert "exited with code 3" in message
    assert "crashing on purpose" in message  # the runner's stderr tail
    assert await backend.list() == []
    assert not pod.meta["workspace"].exists()


async def test_ready_timeout_cleans_up(make_backend):
    backend = await make_backend(
        sandbox=False, runner_args=["--mode", "hang"], runner_command=FAKE_RUNNER_COMMAND
    )
    pod = await backend.create("python")
    proc = pod.meta["process"]
    # 3 s: long enough for the fake runner's interpreter to start and print on a busy machine
    with pytest.raises(PodStartError, match=r"not ready after 3 s(.|\n)*hanging on purpose"):
        await backend.wait_ready(pod, 3)
    assert proc.returncode is not None
    assert await backend.list() == []


async def test_unhealthy_runner_times_out(make_backend):
    backend = await make_backend(
        sandbox=False, runner_args=["--mode", "unhealthy"], runner_command=FAKE_RUNNER_COMMAND
    )
    pod = await backend.create("python")
    with pytest.raises(PodStartError, match="not ready after 1 s"):
        await backend.wait_ready(pod, 1)


async def test_missing_bubblewrap_is_refused(tmp_path):
    backend = LocalBackend(tmp_path, bwrap=str(tmp_path / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable) as err:
        await backend.start()
    message = str(err.value)
    assert "\n" not in message
    assert "not found" in message
    assert "apt-get install bubblewrap" in message
    assert "--KCRGateway.allow_unsandboxed=True" in message


async def test_broken_bubblewrap_is_refused(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    backend = LocalBackend(tmp_path / "gw", bwrap=str(fake))
    with pytest.raises(SandboxUnavailable, match="cannot create the sandbox namespaces"):
        await backend.start()


async def test_unsandboxed_flag_warns_and_runs(make_backend, caplog):
    caplog.set_level(logging.WARNING)
    backend = await make_backend(sandbox=False, bwrap="/nonexistent/bwrap")
    assert any("NOT sandboxed" in r.getMessage() for r in caplog.records)
    pod = await backend.wait_ready(await backend.create("python"), 30)
    result = await run_in_pod(pod, "import os; print(os.getcwd())")
    assert result["stdout"].strip() == str(pod.meta["workspace"])


async def test_close_deletes_remaining_pods(make_backend):
    backend = await make_backend(sandbox=False)
    pods = [await backend.create("python") for _ in range(2)]
    await asyncio.gather(*(backend.wait_ready(p, 30) for p in pods))
    await backend.close()
    assert all(p.meta["process"].returncode is not None for p in pods)
    assert await backend.list() == []


GATEWAY = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from kcr_kernels.backends.local import LocalBackend

    async def main():
        backend = LocalBackend(Path(sys.argv[1]), sandbox=sys.argv[2] == "1",
                               runner_command=json.loads(sys.argv[3]))
        await backend.start()
        pod = await backend.wait_ready(await backend.create("python"), 30)
        print(json.dumps({"runner": pod.meta["process"].pid,
                          "cgroups": [str(f) for f in pod.meta["cgroup"].folders]
                                     if pod.meta.get("cgroup") else []}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sandboxed", [pytest.param(True, marks=needs_bwrap), False])
async def test_runners_die_with_a_killed_gateway(tmp_path, sandboxed):
    gateway = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GATEWAY,
        str(tmp_path / "gw"),
        "1" if sandboxed else "0",
        json.dumps(FAKE_RUNNER_COMMAND),
        stdout=asyncio.subprocess.PIPE,
    )
    info = json.loads(await asyncio.wait_for(gateway.stdout.readline(), 30))
    gateway.send_signal(signal.SIGKILL)
    await gateway.wait()
    await until(lambda: not Path(f"/proc/{info['runner']}").exists())
    for folder in info["cgroups"]:
        procs = Path(folder) / "cgroup.procs"
        await until(lambda procs=procs: not procs.exists() or procs.read_text() == "")
    # The next gateway on the same data dir removes what is left.
    backend = LocalBackend(tmp_path / "gw", sandbox=False)
    await backend.start()
    assert list((tmp_path / "gw" / "pods").iterdir()) == []
    for folder in info["cgroups"]:
        assert not os.path.isdir(folder)  # noqa: ASYNC240

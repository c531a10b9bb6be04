"""A real kcr-gateway, its real sandboxed pods: SIGKILL the gateway and nothing of it stays.

Also checks, on the same gateway, that each pod is a CPU group of its own (cgroup v1: the
runner and its sandboxed worker in ``cpu/.../kcr/<pod>``), so one kernel's busy processes
share one kernel's CPU weight.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil

from kcr_kernels.backends.cgroups import PodCgroups
from kcr_kernels.backends.local import LocalBackend
from tests.jupyter_server.servers import GatewayProcess
from tests.sandbox.sandbox_helpers import needs_bwrap

TOKEN = "gateway-kill-test"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"token {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cpu_group(pid: int) -> str | None:
    """The cgroup v1 ``cpu`` path of ``pid`` (``None`` without a v1 cpu hierarchy)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


@needs_bwrap
def test_sigkill_of_a_real_gateway_leaves_no_runner_or_worker(tmp_path):
    gateway = GatewayProcess(
        tmp_path, TOKEN, args=["--KCRGateway.pools=" + json.dumps({"python": {"warm": 2}})]
    )
    gateway.start(timeout=90)
    try:
        kernel = _post(f"{gateway.url}/api/kernels", {"name": "kcr-python"})
        assert kernel["id"]
        tree = psutil.Process(gateway.proc.pid).children(recursive=True)
        runners = [p for p in tree if "kcr_runner" in " ".join(p.cmdline()[:3])]
        workers = [p for p in tree if "python_worker" in " ".join(p.cmdline())]
        assert len(runners) >= 2 and workers, [p.cmdline()[:3] for p in tree]
        cgroups = PodCgroups()
        if "cpu" in cgroups.roots and cgroups.version == 1:
            for runner in runners:
                group = _cpu_group(runner.pid)
                assert group is not None and "/kcr/kcr-python-" in group, group
            for worker in workers:  # inherited from its runner
                assert _cpu_group(worker.pid) in {_cpu_group(r.pid) for r in runners}
        os.kill(gateway.proc.pid, signal.SIGKILL)  # the gateway alone, not its group
        gateway.proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)
        left = [p.pid for p in tree if _alive(p)]
        assert not left, f"still running after the gateway was SIGKILLed: {left}"
        # The next gateway on the same data dir removes the pods' folders and cgroups.
        backend = LocalBackend(tmp_path / "data", sandbox=False)
        asyncio.run(backend.start())
        assert list((tmp_path / "data" / "pods").iterdir()) == []
    finally:
        for proc in psutil.Process().children(recursive=True):  # never leave one behind
            if proc.pid != os.getpid() and _alive(proc) and "kcr" in " ".join(proc.cmdline()):
                proc.kill()
        gateway.stop()

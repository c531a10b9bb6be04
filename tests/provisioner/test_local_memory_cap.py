"""Local mode (no gateway) caps the kernel's memory as a whole, like the gateway's pods.

Three processes that each touch 40% of a 256 MiB cap: the cell ends with the memory
message, the bridge then reports the kernel dead (its only pod is gone).
"""

from __future__ import annotations

import pytest

from kcr_kernels.backends.cgroups import PodCgroups

BALLOON = """
import subprocess, sys
child = '''
import time
share = bytearray({share})
for i in range(0, len(share), 4096):
    share[i] = 1
time.sleep(5)
'''
procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(3)]
print("exit codes", [p.wait() for p in procs])
"""
CAP = 256 * 1024 * 1024


@pytest.fixture
def mode() -> str:
    return "local"


def test_local_mode_stops_a_kernel_over_its_memory_cap(kcr_spec, jp_start_kernel, run, monkeypatch):
    if "memory" not in PodCgroups().probe():
        pytest.skip("no writable memory cgroup on this host")
    monkeypatch.setenv("KCR_MEMORY_LIMIT", "256Mi")
    _km, kc = run(jp_start_kernel(kcr_spec))
    reply = run(kc.execute_interactive(BALLOON.format(share=int(CAP * 0.4)), timeout=60))
    content = reply["content"]
    assert content["status"] == "error", content
    assert content["ename"] == "KernelDied"
    assert "used more than 256 MiB of memory" in content["evalue"]

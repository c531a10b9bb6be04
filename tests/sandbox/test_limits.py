"""Resource limits hold inside a sandboxed pod: memory, file size, CPU time, processes."""

from __future__ import annotations

import json

from kcr_kernels.backends.sandbox import GIB, MIB, SandboxLimits
from tests.sandbox.sandbox_helpers import needs_bwrap, run_in_pod

pytestmark = needs_bwrap


async def test_memory_hog_gets_memory_error(pod_factory):
    pod = await pod_factory(limits=SandboxLimits(address_space=1 * GIB))
    code = """
try:
    hog = bytearray(4 * 1024**3)
    print("allocated")
except MemoryError:
    print("MemoryError")
"""
    result = await run_in_pod(pod, code)
    assert result["stdout"].strip() == "MemoryError", result


async def test_huge_file_write_fails(pod_factory):
    pod = await pod_factory(limits=SandboxLimits(file_size=1 * MIB))
    code = """
import errno
try:
    with open("/work/big.bin", "wb") as f:
        f.write(b"x" * (2 * 1024**2))
    print("written")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
    result = await run_in_pod(pod, code)
    assert result["stdout"].strip() == "EFBIG", result
    assert (pod.meta["workspace"] / "big.bin").stat().st_size <= MIB


async def test_cpu_loop_is_stopped(pod_factory):
    # RLIMIT_CPU counts each process's own CPU time: leave ipykernel room to start (~1 s).
    pod = await pod_factory(limits=SandboxLimits(cpu_seconds=4))
    code = """
import time
start = time.monotonic()
while time.monotonic() - start < 30:
    pass
print("survived")
"""
    result = await run_in_pod(pod, code)
    assert "survived" not in result["stdout"]
    assert result["rc"] != 0, result


async def test_process_count_is_capped(pod_factory):
    pod = await pod_factory(limits=SandboxLimits(processes=20))
    code = """
import json, os, time
children = []
error = None
for i in range(100):
    try:
        pid = os.fork()
    except OSError as e:
        error = e.strerror
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(children), "error": error}))
"""
    result = await run_in_pod(pod, code)
    out = json.loads(result["stdout"])
    assert out["forked"] < 20 and out["error"], out


async def test_private_tmp_is_size_limited(pod_factory):
    pod = await pod_factory(limits=SandboxLimits(tmp_size=1 * MIB))
    code = """
import errno
try:
    with open("/tmp/fill", "wb") as f:
        f.write(b"x" * (4 * 1024**2))
    print("written")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
    result = await run_in_pod(pod, code)
    assert result["stdout"].strip() == "ENOSPC", result

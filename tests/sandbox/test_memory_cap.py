"""The per-pod memory cap: a kernel's processes together cannot use more than its limit.

Real sandboxed pods (LocalBackend + the real runner + bwrap) in a real memory cgroup (v1 or
v2, whichever this host has). Skipped where the host gives no writable memory cgroup.
"""

from __future__ import annotations

import pytest
from kcr_runner.memory_cap import oom_kills

from kcr_kernels.backends.cgroups import PodCgroups, parse_memory
from kcr_kernels.backends.sandbox import MIB
from tests.sandbox.sandbox_helpers import needs_bwrap, run_in_pod

pytestmark = needs_bwrap

LIMIT = 256 * MIB

# Three processes, each allocating and touching ~40% of the limit (120% together), each
# under RLIMIT_AS by far: only a cap on the kernel as a whole can stop them.
BALLOON = """
import subprocess, sys
child = '''
import time
share = bytearray({share})
for i in range(0, len(share), 4096):
    share[i] = 1
print("filled", flush=True)
time.sleep(3)
'''
procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(3)]
print("codes", [p.wait() for p in procs], flush=True)
"""


def _memory_cgroups_work() -> bool:
    return "memory" in PodCgroups().probe()


needs_memory_cgroup = pytest.mark.skipif(
    not _memory_cgroups_work(), reason="no writable memory cgroup on this host"
)


@needs_memory_cgroup
async def test_balloon_in_three_processes_is_stopped_at_the_kernel_limit(pod_factory):
    pod = await pod_factory(memory_limit=LIMIT)
    cgroup = pod.meta["cgroup"].memory
    assert cgroup is not None
    result = await run_in_pod(pod, BALLOON.format(share=int(LIMIT * 0.4)))
    assert result["rc"] == 1, result
    assert (
        "KernelDied: the kernel used more than 256 MiB of memory and was stopped"
        in (result["stderr"])
    ), result
    assert "codes" not in result["stdout"], result  # the cell did not run to its end
    assert oom_kills(cgroup) >= 1
    # The kernel is stopped for good: the next cell gets the same clear reason.
    again = await run_in_pod(pod, "print('hello')")
    assert "used more than 256 MiB of memory" in again["stderr"], again


@needs_memory_cgroup
async def test_kernel_under_its_limit_is_not_stopped(pod_factory):
    pod = await pod_factory(memory_limit=LIMIT)
    # Three processes at ~10% each: 30% of the limit, beside the worker itself (ipykernel's
    # kernel and its relay hold ~110 MB of the cgroup's memory).
    result = await run_in_pod(pod, BALLOON.format(share=int(LIMIT * 0.1)))
    assert result["rc"] == 0, result
    assert "codes [0, 0, 0]" in result["stdout"], result
    assert "memory" not in result["stderr"], result
    assert oom_kills(pod.meta["cgroup"].memory) == 0


@needs_memory_cgroup
async def test_a_crash_that_is_not_an_oom_gets_no_memory_message(pod_factory):
    pod = await pod_factory(memory_limit=LIMIT)
    result = await run_in_pod(pod, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert result["rc"] == 1, result
    assert "KernelDied" in result["stderr"], result
    assert "killed by signal SIGKILL: it was stopped from outside the kernel" in result["stderr"]
    assert "memory" not in result["stderr"], result  # neither "used more than" nor "OOM"


@needs_memory_cgroup
async def test_memory_cap_is_per_language(make_backend):
    backend = await make_backend(memory_limit=LIMIT, memory_limits={"python": 128 * MIB})
    pod = await backend.wait_ready(await backend.create("python"), 30)
    result = await run_in_pod(pod, "print(1 + 1)")
    assert result["stdout"].strip() == "2", result
    limit_file = next(
        p
        for p in (pod.meta["cgroup"].memory / n for n in ("memory.max", "memory.limit_in_bytes"))
        if p.exists()
    )
    assert int(limit_file.read_text()) == 128 * MIB


async def test_no_writable_memory_cgroup_is_one_warning_and_pods_still_start(
    make_backend, tmp_path, caplog
):
    missing = PodCgroups({"memory": tmp_path / "no-such-cgroupfs" / "kcr"}, version=1)
    (tmp_path / "no-such-cgroupfs").write_text("a file, so no folder can be made under it")
    backend = await make_backend(memory_limit=LIMIT, cgroups=missing)
    warnings = [r.getMessage() for r in caplog.records if "memory cgroup" in r.getMessage()]
    assert len(warnings) == 1 and "NOT enforced" in warnings[0], warnings
    pod = await backend.wait_ready(await backend.create("python"), 30)
    result = await run_in_pod(pod, "print(1 + 1)")
    assert result["stdout"].strip() == "2", result


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2Gi", 2 * 1024**3),
        ("512Mi", 512 * MIB),
        ("256MiB", 256 * MIB),
        ("1G", 10**9),
        ("1.5Gi", 3 * 1024**3 // 2),
        (268435456, 256 * MIB),
        ("0", None),
        ("", None),
        (None, None),
    ],
)
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


def test_bad_memory_size_names_the_forms():
    with pytest.raises(ValueError, match="Mi"):
        parse_memory("lots")


def test_oom_counter_reads_both_versions(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert (oom_kills(v2), oom_kills(v1), oom_kills(tmp_path)) == (2, 5, None)


def _fake_v2_tree(tmp_path):
    """A folder laid out like a delegated cgroup v2 parent (regular files stand in)."""
    root = tmp_path / "kcr"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")
    return PodCgroups({"pids": root, "memory": root}, version=2), root


def test_v2_pod_cgroup_caps_memory_without_swap_and_stops_the_whole_group(tmp_path):
    cgroups, root = _fake_v2_tree(tmp_path)
    cgroup = cgroups.create("pod", pids_max=64, memory_max=LIMIT)
    folder = root / "pod"
    assert cgroup.folders == (folder,) and cgroup.memory == folder
    assert (folder / "memory.max").read_text() == str(LIMIT)
    assert (folder / "memory.swap.max").read_text() == "0"
    assert (folder / "memory.oom.group").read_text() == "1"
    assert (folder / "pids.max").read_text() == "64"
    assert (root / "cgroup.subtree_control").read_text().split() == ["+pids", "+memory"]


def test_v1_pod_cgroup_caps_memory_and_swap_in_the_memory_hierarchy(tmp_path):
    memory_root, pids_root = tmp_path / "memory" / "kcr", tmp_path / "pids" / "kcr"
    (memory_root / "pod").mkdir(parents=True)
    (memory_root / "pod" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712")
    cgroups = PodCgroups({"pids": pids_root, "memory": memory_root}, version=1)
    cgroup = cgroups.create("pod", pids_max=64, memory_max=LIMIT)
    assert set(cgroup.folders) == {memory_root / "pod", pids_root / "pod"}
    assert cgroup.memory == memory_root / "pod"
    assert (memory_root / "pod" / "memory.limit_in_bytes").read_text() == str(LIMIT)
    assert (memory_root / "pod" / "memory.memsw.limit_in_bytes").read_text() == str(LIMIT)


def _events(folder, oom: int, oom_kill: int) -> None:
    (folder / "memory.events").write_text(f"low 0\nhigh 0\nmax 9\noom {oom}\noom_kill {oom_kill}\n")


def test_the_memory_message_needs_the_cgroups_own_limit_to_be_hit(tmp_path):
    from kcr_runner.memory_cap import MemoryCap

    (tmp_path / "memory.max").write_text(str(LIMIT))
    _events(tmp_path, oom=0, oom_kill=0)
    cap = MemoryCap(tmp_path)
    cap.arm()
    assert not cap.tripped()
    _events(tmp_path, oom=0, oom_kill=1)  # a host-wide OOM kill: not "over its limit"
    assert not cap.tripped()
    _events(tmp_path, oom=1, oom_kill=2)
    assert cap.tripped()
    assert cap.message().startswith("the kernel used more than 256 MiB of memory")


@needs_memory_cgroup
async def test_through_the_gateway_the_user_reads_why_and_the_kernel_goes_on(tmp_path):
    from tests.gateway.conftest import WSKernelClient, start_gateway, start_kernel

    app = await start_gateway(tmp_path, pools={"python": {"warm": 1, "memory": "256Mi"}})
    client = None
    try:
        base = f"http://127.0.0.1:{app.port}"
        client = await WSKernelClient.connect(base, await start_kernel(base))
        reply = await client.execute(BALLOON.format(share=int(LIMIT * 0.4)))
        assert reply.content["ename"] == "KernelDied"
        assert (
            "the kernel used more than 256 MiB of memory and was stopped"
            in (reply.content["evalue"])
        )
        (error,) = reply.outputs("error")
        assert "used more than 256 MiB" in error["evalue"]
        again = await client.execute("print(1 + 1)")  # on a fresh pod
        assert again.stdout == "2\n"
        assert "moved to a new pod" in again.stderr
    finally:
        if client is not None:
            client.close()
        await app.stop_async()


def test_a_bad_memory_setting_stops_the_gateway_with_the_accepted_forms():
    from kcr_gateway.app import KCRGateway, StartupError
    from traitlets.config import Config

    config = Config()
    config.KCRGateway.pools = {"python": {"warm": 1, "memory": "lots"}}
    with pytest.raises(StartupError, match=r"bad memory setting.*Gi"):
        KCRGateway(config=config).memory_limits()
    config.KCRGateway.pools = {"python": {"warm": 1, "memory": "512Mi"}, "r": {"warm": 0}}
    config.KCRGateway.memory_limit = "1Gi"
    assert KCRGateway(config=config).memory_limits() == (1024**3, {"python": 512 * MIB})

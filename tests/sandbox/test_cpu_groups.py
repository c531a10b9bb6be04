"""Each local pod is a CPU group of its own (fair scheduling between kernels).

Layout checks on folders laid out like cgroup trees (regular files stand in for the
controls); a real pod's processes are checked in ``test_gateway_kill.py``.
"""

from __future__ import annotations

from kcr_kernels.backends.cgroups import CPU_SHARES, PodCgroups


def test_v1_cpu_group_is_joined_by_the_runner_not_listed_for_the_worker(tmp_path):
    roots = {name: tmp_path / name / "kcr" for name in ("pids", "memory", "cpu")}
    cgroups = PodCgroups(roots, version=1)
    cgroup = cgroups.create("pod", pids_max=64, memory_max=1 << 30, cpu_weight=CPU_SHARES)
    cpu = roots["cpu"] / "pod"
    assert cgroup.runner == (cpu,)
    assert cpu not in cgroup.folders  # the worker inherits it from the runner
    assert set(cgroup.folders) == {roots["pids"] / "pod", roots["memory"] / "pod"}
    assert (cpu / "cpu.shares").read_text() == str(CPU_SHARES)
    assert cpu in cgroup.all_folders
    # what a killed gateway left is found again, with the same split
    again = cgroups.existing("pod")
    assert again.runner == (cpu,) and cpu not in again.folders


def test_v2_cpu_weight_is_set_in_the_workers_folder(tmp_path):
    root = tmp_path / "kcr"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")
    cgroups = PodCgroups({"pids": root, "memory": root, "cpu": root}, version=2)
    cgroup = cgroups.create("pod", pids_max=64, memory_max=1 << 30, cpu_weight=CPU_SHARES)
    assert cgroup.folders == (root / "pod",) and cgroup.runner == ()
    assert (root / "pod" / "cpu.weight").read_text() == "100"
    assert "+cpu" in (root / "cgroup.subtree_control").read_text().split()


def test_no_cpu_hierarchy_leaves_the_other_caps(tmp_path):
    roots = {name: tmp_path / name / "kcr" for name in ("pids", "memory")}
    cgroup = PodCgroups(roots, version=1).create(
        "pod", pids_max=64, memory_max=1 << 30, cpu_weight=CPU_SHARES
    )
    assert cgroup.runner == () and len(cgroup.folders) == 2


def _start(folder):
    (folder / "cgroup.procs").write_text("4242\n")  # a process of the pod joined it


def test_the_parent_weighs_one_share_per_live_pod_up_to_one_per_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    root = tmp_path / "cpu" / "kcr"
    cgroups = PodCgroups({"cpu": root}, version=1)
    cgroups.create("left-by-a-killed-gateway", cpu_weight=CPU_SHARES)  # stays empty
    for name in ("a", "b"):
        cgroups.create(name, cpu_weight=CPU_SHARES)
        _start(root / name)
    cgroups.create("c", cpu_weight=CPU_SHARES)
    assert (root / "cpu.shares").read_text() == str(3 * CPU_SHARES)  # a, b and the new c

    # However many kernels are busy, pods together weigh at most one process per CPU,
    # so the gateway outside the group keeps its share.
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    _start(root / "c")
    cgroups.create("d", cpu_weight=CPU_SHARES)
    assert (root / "cpu.shares").read_text() == str(2 * CPU_SHARES)

"""Per-pod cgroups for the local backend: a process cap (pids), a memory cap (memory) and a
CPU group of its own (cpu: fair scheduling between kernels).

The rlimits the sandbox sets are per process: ``RLIMIT_AS`` lets three processes of one
kernel hold 3 x 4 GiB, and ``RLIMIT_NPROC`` does not hold for a root gateway. A per-pod
cgroup caps the kernel as a whole. :class:`PodCgroups` finds where this gateway may create
cgroups and creates one per pod:

* **cgroup v2** (one hierarchy at ``/sys/fs/cgroup``): ``<own cgroup>/kcr/<pod>`` with
  ``pids.max``, ``memory.max``, ``memory.swap.max = 0`` (the cap is RAM, not swap) and
  ``memory.oom.group = 1`` (an OOM kill stops every process of the kernel). The gateway's
  own cgroup must already delegate the controllers (``cgroup.subtree_control``).
* **cgroup v1** (a hierarchy per controller, also the "hybrid" layout):
  ``/sys/fs/cgroup/pids/<own>/kcr/<pod>`` with ``pids.max`` and
  ``/sys/fs/cgroup/memory/<own>/kcr/<pod>`` with ``memory.limit_in_bytes`` and, where swap
  accounting exists, ``memory.memsw.limit_in_bytes`` (same value: no swap beyond the cap).

**CPU** (``cpu_weight``): every pod is one scheduling group of equal weight, so a kernel that
keeps three processes busy gets the CPU share of one kernel, and the kernels beside it (and
the gateway) still get theirs at once when they wake. The ``kcr`` parent is given the weight
of its live pods, at most one per CPU (so busy kernels, however many, never starve the
gateway). On
v1 the group lives in the ``cpu``
hierarchy and the pod's *runner* joins it (the worker inherits it): the runner's work for a
flooding kernel counts as that kernel's. On v2 the ``cpu`` controller (when delegated) is
enabled in the worker's folder (``cpu.weight``); the runner stays outside.

A controller the host does not offer, or a cgroup folder the gateway cannot write (a
read-only cgroupfs in a container, an undelegated v2 tree), is simply not used:
:meth:`PodCgroups.create` returns the folders it could set up, and
:meth:`PodCgroups.probe` tells the backend once, at start, which caps will hold (the
backend logs one line for each that will not). The worker joins every folder of its
:class:`PodCgroup` before it execs the sandbox (see ``Sandbox.prefix``); the runner
reads OOM kills back from the memory folder (:mod:`kcr_runner.memory_cap`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_FS = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "memory", "cpu")
#: The default weight of a pod's CPU group (cgroup v1 ``cpu.shares``; v2 uses 100).
CPU_SHARES = 1024

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGTP]i?)?B?\s*$")
_FACTORS = {
    "": 1,
    "K": 1000,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "Ki": 1024,
    "ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
}


def parse_memory(value: str | int | None) -> int | None:
    """A memory size in bytes from ``"2Gi"``, ``"512Mi"``, ``"1G"``, ``"256MiB"`` or an int.

    Kubernetes quantity suffixes (``Ki Mi Gi Ti``: powers of 1024; ``K M G T``: powers of
    1000). ``None``, ``""``, ``0`` and ``"0"`` mean "no cap" and give ``None``. Raises
    ``ValueError`` with the accepted forms for anything else.
    """
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        raise ValueError(f"bad memory size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad memory size {value!r}: must be positive")
        return value
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(
            f"bad memory size {value!r}: use bytes or a number with Ki/Mi/Gi/Ti "
            "(powers of 1024) or K/M/G/T (powers of 1000), e.g. '2Gi' or '512Mi'"
        )
    number, unit = match.groups()
    size = int(float(number) * _FACTORS[unit or ""])
    return size or None


@dataclass(frozen=True)
class PodCgroup:
    """The cgroup folders of one pod's worker.

    ``folders``: every folder the worker joins (one on v2, one per controller on v1).
    ``memory``: the folder that carries the memory cap, or ``None`` when there is none.
    ``runner``: folders the pod's runner joins (v1: its CPU group; its children inherit it).
    """

    folders: tuple[Path, ...]
    memory: Path | None = None
    runner: tuple[Path, ...] = ()

    @property
    def all_folders(self) -> tuple[Path, ...]:
        return self.folders + self.runner

    def kill_all(self) -> int:
        """SIGKILL every process left in the pod's cgroups; returns how many were signalled."""
        killed = 0
        for folder in self.all_folders:
            try:
                pids = (folder / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, ValueError):
                    pass
        return killed

    def remove(self) -> bool:
        """Remove the (empty) folders; ``False`` while processes remain in one."""
        done = True
        for folder in self.all_folders:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done


def _own_cgroups(proc_cgroup: Path = Path("/proc/self/cgroup")) -> list[tuple[str, str]]:
    """``(controllers, path)`` pairs of this process; v2's line has controllers ``""``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


class PodCgroups:
    """Where this gateway creates per-pod cgroups, per controller.

    ``roots`` maps a controller (``"pids"``, ``"memory"``, ``"cpu"``) to the ``kcr`` folder pods are
    created in; found from ``/proc/self/cgroup`` when not given (tests pass their own).
    ``version`` is 2 for the unified hierarchy, 1 otherwise.
    """

    def __init__(self, roots: dict[str, Path] | None = None, *, version: int | None = None):
        if roots is None:
            roots, version = self._find_roots()
        self.roots = dict(roots)
        self.version = version or 1

    @staticmethod
    def _find_roots() -> tuple[dict[str, Path], int]:
        own = _own_cgroups()
        roots: dict[str, Path] = {}
        for controllers, path in own:  # v1: a hierarchy per controller
            for name in CONTROLLERS:
                if name in controllers.split(","):
                    base = CGROUP_FS / name / path.lstrip("/")
                    if base.is_dir():
                        roots[name] = base / "kcr"
        if roots:
            return roots, 1
        unified = [path for controllers, path in own if controllers == ""]
        if unified and (CGROUP_FS / "cgroup.controllers").exists():  # v2 at /sys/fs/cgroup
            base = CGROUP_FS / unified[0].lstrip("/")
            try:
                delegated = (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                delegated = []
            for name in CONTROLLERS:
                if name in delegated:
                    roots[name] = base / "kcr"
        return roots, 2

    @property
    def root(self) -> Path | None:
        """The pids root (kept for callers that only care about the process cap)."""
        return self.roots.get("pids")

    def probe(self) -> set[str]:
        """The controllers a pod cgroup can really be created with (blocking)."""
        name = f"probe-{secrets.token_hex(4)}"
        cgroup = self.create(name, pids_max=64, memory_max=64 * 1024**2, cpu_weight=CPU_SHARES)
        if cgroup is None:
            return set()
        working = {c for c, root in self.roots.items() if root / name in cgroup.all_folders}
        cgroup.remove()
        return working

    def _prepare_v2_parent(self, root: Path) -> None:
        root.mkdir(exist_ok=True)
        wanted = [c for c in CONTROLLERS if c in self.roots]
        enabled = (root / "cgroup.subtree_control").read_text().split()
        missing = [f"+{c}" for c in wanted if c not in enabled]
        if missing:
            (root / "cgroup.subtree_control").write_text(" ".join(missing))

    def create(
        self,
        name: str,
        *,
        pids_max: int | None = None,
        memory_max: int | None = None,
        cpu_weight: int | None = None,
    ) -> PodCgroup | None:
        """Create the pod's cgroups with the caps given (``None``: that cap is not wanted).

        ``cpu_weight``: a CPU group of its own with this weight in v1 ``cpu.shares`` units
        (1024 = the default; v2 gets the same fraction of 100 in ``cpu.weight``).
        Returns ``None`` when no cap could be set up; a controller that fails is left out
        (and logged at debug level), the others are kept.
        """
        wanted = {"pids": pids_max, "memory": memory_max, "cpu": cpu_weight}
        folders: dict[Path, None] = {}
        runner: dict[Path, None] = {}
        memory: Path | None = None
        for controller, value in wanted.items():
            root = self.roots.get(controller)
            if value is None or root is None:
                continue
            folder = root / name
            try:
                if self.version == 2:
                    self._prepare_v2_parent(root)
                folder.mkdir(parents=True, exist_ok=True)
                if controller == "pids":
                    (folder / "pids.max").write_text(str(value))
                elif controller == "memory":
                    self._write_memory(folder, value)
                    memory = folder
                else:
                    self._write_cpu(folder, value)
                    self._size_cpu_parent(root, value)
            except OSError as e:
                log.debug("no %s cgroup at %s: %s", controller, folder, e)
                if folder not in folders and folder not in runner:
                    PodCgroup((folder,)).remove()
                continue
            if controller == "cpu" and self.version == 1:
                runner[folder] = None
            else:
                folders[folder] = None
        if not folders and not runner:
            return None
        return PodCgroup(tuple(folders), memory, tuple(runner))

    def _write_cpu(self, folder: Path, shares: int) -> None:
        if self.version == 2:
            (folder / "cpu.weight").write_text(str(max(1, min(10000, shares * 100 // 1024))))
        else:
            (folder / "cpu.shares").write_text(str(max(2, min(262144, shares))))

    def _size_cpu_parent(self, root: Path, shares: int) -> None:
        """Give the ``kcr`` parent one ``shares`` per live pod in it (the one being made
        included), at most one per CPU: pods as a whole weigh what that many busy
        processes would, so however many kernels are busy the gateway (outside the
        group) keeps its share of the CPU and stays responsive. Empty groups (left by a
        killed gateway, or of pods not started yet) do not count. Best effort."""
        try:
            live = sum(1 for entry in root.iterdir() if entry.is_dir() and _has_processes(entry))
            pods = min(live + 1, os.cpu_count() or 1)
            self._write_cpu(root, shares * pods)
        except OSError as e:
            log.debug("cannot size the cpu cgroup %s: %s", root, e)

    def _write_memory(self, folder: Path, limit: int) -> None:
        if self.version == 2:
            (folder / "memory.max").write_text(str(limit))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                try:
                    (folder / name).write_text(value)
                except OSError:  # no swap accounting / old kernel: the RAM cap still holds
                    pass
            return
        (folder / "memory.limit_in_bytes").write_text(str(limit))
        memsw = folder / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # swap accounting on: RAM + swap may not exceed the cap either
            memsw.write_text(str(limit))

    def existing(self, name: str) -> PodCgroup:
        """The cgroup folders pod ``name`` would have (to clear what a killed gateway left)."""
        folders = tuple(
            root / name
            for controller, root in self.roots.items()
            if (root / name).is_dir() and not (controller == "cpu" and self.version == 1)
        )
        cpu = self.roots.get("cpu")
        runner = (cpu / name,) if cpu and self.version == 1 and (cpu / name).is_dir() else ()
        memory = self.roots.get("memory")
        return PodCgroup(folders, memory / name if memory is not None else None, runner)


def _has_processes(folder: Path) -> bool:
    try:
        return bool((folder / "cgroup.procs").read_text().strip())
    except OSError:
        return False

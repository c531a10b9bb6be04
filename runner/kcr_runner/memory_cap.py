"""The pod's memory cap as the runner sees it: a memory cgroup's limit and its OOM kills.

The local backend puts a pod's worker (and every process it starts) in a memory cgroup and
passes its folder to the runner (``--memory-cgroup``). :class:`MemoryCap` reads that folder,
for both cgroup versions:

* cgroup v2: limit ``memory.max``; ``memory.events`` counts OOM kills (``oom_kill``) and
  the times the limit itself was hit with nothing left to reclaim (``oom``);
* cgroup v1: limit ``memory.limit_in_bytes``; ``memory.oom_control`` counts OOM kills
  (``oom_kill``, Linux >= 4.13) and ``memory.max_usage_in_bytes`` shows whether usage ever
  reached the limit. ``memory.failcnt`` is NOT used: it also counts limit hits that
  reclaim absorbed (page cache), which would blame the kernel wrongly.

:meth:`MemoryCap.tripped` is ``True`` only when an OOM kill happened in the cgroup since
the cap was armed AND it was this cgroup's limit that was reached (a host-wide OOM kill
of a kernel under its limit is not reported as "used more than N"). The worker is then
stopped with :meth:`MemoryCap.message` as the reason, which is what the
user reads in the cell's ``KernelDied`` error. Stdlib only (the runner's rule).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("kcr_runner.memory")

_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def format_bytes(n: int) -> str:
    """``268435456`` -> ``"256 MiB"``; ``2147483648`` -> ``"2 GiB"``; 1.5 GiB -> ``"1.5 GiB"``."""
    for unit, size in _UNITS:
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def oom_message(limit: int | None) -> str:
    """The sentence the user reads when the pod's memory cap stopped the kernel."""
    amount = f"more than {format_bytes(limit)}" if limit else "more than its limit"
    return (
        f"the kernel used {amount} of memory and was stopped (its memory limit); "
        "its variables are lost: run the notebook again with less data in memory"
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _field(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def oom_kills(cgroup: Path) -> int | None:
    """How many OOM kills the memory cgroup ``cgroup`` has seen; ``None`` if unreadable."""
    count = _field(_read(cgroup / "memory.events"), "oom_kill")  # v2
    if count is not None:
        return count
    return _field(_read(cgroup / "memory.oom_control"), "oom_kill")  # v1, Linux >= 4.13


def limit_events(cgroup: Path) -> int | None:
    """v2: how many times the cgroup hit its limit with nothing to reclaim (``oom``)."""
    return _field(_read(cgroup / "memory.events"), "oom")


def peak_usage(cgroup: Path) -> int | None:
    """v1: the highest memory usage the cgroup saw, in bytes."""
    text = _read(cgroup / "memory.max_usage_in_bytes")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def memory_limit(cgroup: Path) -> int | None:
    """The cgroup's memory limit in bytes; ``None`` for "max" / unlimited / unreadable."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        text = _read(cgroup / name)
        if text is None:
            continue
        try:
            value = int(text)
        except ValueError:
            return None  # "max"
        return value if value < 2**62 else None  # v1 reports "unlimited" as ~2^63
    return None


class MemoryCap:
    """One pod's memory cgroup, armed when the worker starts.

    ``MemoryCap(None)`` is the "no cap" object: :meth:`tripped` is always ``False``.
    """

    def __init__(self, cgroup: str | Path | None) -> None:
        self.cgroup = Path(cgroup) if cgroup else None
        self.limit: int | None = None
        self._baseline: int | None = None
        self._limit_events: int | None = None

    def arm(self) -> None:
        """Remember the current OOM-kill count; later kills are this kernel's."""
        if self.cgroup is None:
            return
        self.limit = memory_limit(self.cgroup)
        self._baseline = oom_kills(self.cgroup)
        self._limit_events = limit_events(self.cgroup)
        if self._baseline is None:
            log.warning("memory cgroup %s: no OOM counter readable", self.cgroup)

    def tripped(self) -> bool:
        """``True`` once the cgroup's OOM killer has acted since :meth:`arm`."""
        if self.cgroup is None or self._baseline is None:
            return False
        count = oom_kills(self.cgroup)
        if count is None or count <= self._baseline:
            return False
        if self._limit_events is not None:  # v2
            hits = limit_events(self.cgroup)
            return hits is not None and hits > self._limit_events
        peak = peak_usage(self.cgroup)  # v1
        # Charges come in batches of up to 64 pages: "reached" is within 1 MiB of the limit.
        return peak is not None and self.limit is not None and peak >= self.limit - 1024**2

    def message(self) -> str:
        return oom_message(self.limit)

    def kill_all(self) -> None:
        """SIGKILL every process left in the cgroup (the worker's children too)."""
        if self.cgroup is None:
            return
        import os
        import signal

        for pid in (_read(self.cgroup / "cgroup.procs") or "").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass

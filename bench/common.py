"""Helpers shared by the benchmark scripts under ``bench/``.

Nothing here measures anything by itself: free loopback ports, percentiles,
a one-line description of the machine, and :class:`ManagedProcess`, a
server subprocess that is always stopped (with everything it started) when
the benchmark ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summarize_ms(seconds: Sequence[float]) -> dict:
    """``{"n", "p50_ms", "p99_ms", "mean_ms", "max_ms"}`` of durations given in seconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
    }


def version_of(distribution: str) -> str:
    """Installed version of a distribution, or ``"-"`` when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info(distributions: Sequence[str] = ()) -> dict:
    """Cores, memory, CPU model, OS, Python and the versions of ``distributions``."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {d: version_of(d) for d in distributions},
    }


def machine_line(info: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"machine: {info['usable_cores']} cores ({info['cpu']}), {info['memory_gb']} GB, "
        f"{info['os']}, Python {info['python']}; {versions}"
    )


def kcr_gateway_argv(
    port: int,
    data_dir: Path,
    pools: dict,
    *,
    allow_unsandboxed: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a benchmark's kcr-gateway: this Python, 127.0.0.1:``port``,
    ``data_dir``, the ``pools`` setting, no auth token (and ``extra`` options last).

    Start it with ``kcr_gateway_env()`` so a ``KCR_AUTH_TOKEN`` of the shell does not apply.
    """
    argv = [
        sys.executable,
        "-m",
        "kcr_gateway.app",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--data-dir={data_dir}",
        "--KCRGateway.pools=" + json.dumps(pools),
        "--KCRGateway.auth_token=",
    ]
    if allow_unsandboxed:
        argv.append("--allow-unsandboxed")
    return [*argv, *extra]


def kcr_gateway_env() -> dict[str, str]:
    """This process's environment without ``KCR_AUTH_TOKEN`` (the benches run without auth)."""
    return {k: v for k, v in os.environ.items() if k != "KCR_AUTH_TOKEN"}


def rss_bytes(pid: int) -> int:
    """Resident memory of one process."""
    return psutil.Process(pid).memory_info().rss


def descendants_rss_bytes(pid: int) -> tuple[int, int]:
    """``(count, total RSS)`` of every live descendant of ``pid``."""
    total = count = 0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
            count += 1
    return count, total


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by ``processes`` (gone ones count 0)."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class CpuMeter:
    """CPU time used by named groups of processes during a ``with`` block.

    ``CpuMeter({"gateway": [pid], "pods": pids})``; after the block,
    ``meter.used`` maps each group to the CPU seconds its processes used.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {}
        for name, pids in groups.items():
            procs = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
            self.groups[name] = procs
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(procs) for name, procs in self.groups.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.used = {
            name: cpu_seconds(procs) - self._start[name] for name, procs in self.groups.items()
        }


def descendant_pids(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


class ManagedProcess:
    """A server subprocess in its own session, its output in ``log_path``.

    Contract: :meth:`stop` (also run by ``with``) sends SIGTERM to the
    process group, waits up to ``grace`` seconds, then SIGKILLs the group and
    every descendant recorded while it ran (so kernels or pods that moved to
    their own process group die too). It is idempotent and never raises.
    :meth:`check_alive` raises ``RuntimeError`` with the log's tail if the
    process has exited.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._seen: dict[int, psutil.Process] = {}

    def remember_descendants(self) -> None:
        """Record the current descendants so :meth:`stop` can kill leftovers."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n"
                + self.log_tail()
            )

    def stop(self, grace: float = 15.0) -> None:
        self.remember_descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop in {grace:.0f}s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        deadline = time.monotonic() + 5
        for child in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.wait(max(deadline - time.monotonic(), 0.01))
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        self._seen.clear()
        self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""The ``local`` pod backend: each pod is a ``kcr-runner`` process on 127.0.0.1.

The runner is the trusted supervisor and runs unsandboxed; the worker it
starts (the process that runs user code) is wrapped in the bubblewrap prefix
built by :mod:`kcr_kernels.backends.sandbox`. See ``docs/sandbox.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

from kcr_runner.memory_cap import format_bytes
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .base import Pod, PodBackend, PodStartError
from .cgroups import CPU_SHARES, PodCgroup, PodCgroups
from .sandbox import Sandbox, SandboxLimits

READY_PREFIX = "KCR_RUNNER_READY "
_STDERR_TAIL = 40
#: Seconds delete() waits for a killed runner to be reaped.
_EXIT_WAIT = 10.0
# Environment variables passed from the gateway to a runner. Everything else
# (store credentials, cloud keys, ...) stays in the gateway.
_ENV_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "COVERAGE_PROCESS_START")
#: Host uid/gid that sandboxes started by a root gateway run as (and own workspace files).
DEFAULT_SANDBOX_HOST_UID = 61000
#: How many host uids from ``sandbox_uid`` on a root gateway hands out (one per live pod).
SANDBOX_UID_RANGE = 4096
#: Joins every cgroup folder given before ``--``, then execs the rest of the arguments.
JOIN_CGROUPS = (
    'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@"'
)


def _process_owners() -> set[int]:
    """The uids that own a process on this host (from ``/proc``)."""
    owners = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                try:
                    owners.add(entry.stat().st_uid)
                except OSError:
                    pass
    return owners


class LocalBackend(PodBackend):
    """Pods as local runner processes, their workers sandboxed with bubblewrap.

    * ``root_dir/pods/<pod-name>/work`` is a pod's workspace (created fresh,
      removed on delete). ``root_dir`` belongs to one gateway: :meth:`start`
      removes pods a previous, killed gateway left there.
    * Each runner gets a fresh ``secrets.token_urlsafe`` token (in its
      environment only; the sandbox prefix unsets it for the worker), its own
      process group, and SIGKILL as parent-death signal (``setpriv
      --pdeathsig``), so runners die with the gateway; their sandboxed workers
      die with them (``bwrap --die-with-parent``).
    * ``sandbox=False`` runs workers unsandboxed, logging a warning at start.
      ``sandbox=True`` makes :meth:`start` raise
      :class:`~kcr_kernels.backends.sandbox.SandboxUnavailable` when bubblewrap
      is missing or cannot create namespaces.
    * ``limits`` sets the worker's rlimits; ``limits.processes`` also becomes a
      per-pod pids cgroup cap where the host allows one.
    * Each sandboxed pod is a CPU group of its own, of equal weight (cgroup v1: the runner
      and everything it starts; v2: the worker), so one kernel's busy processes cannot
      take the CPU from the others; see :mod:`.cgroups`.
    * ``sandbox_uid`` (used only when the gateway runs as root): the first of
      ``SANDBOX_UID_RANGE`` unprivileged host uids; each live pod's sandbox runs as its own
      one (uid = gid), so kernel code is not host root, pods cannot touch each other's
      files and RLIMIT_NPROC counts one pod's processes only. The workspace is created
      owned by it (mode 0700), and the runner is told to do its workspace file operations
      as that uid (``--files-uid``/``--files-gid``). ``None`` keeps the sandbox mapped to
      root. A non-root gateway's sandbox maps to its own uid.
    * ``memory_limit`` (bytes, ``None``: no cap) caps the memory of a pod's worker
      and every process it starts, as a whole (a memory cgroup, v1 or v2; no swap
      beyond it); ``memory_limits`` overrides it per language. When the cgroup's
      OOM killer acts, the runner stops the kernel and the cell's ``KernelDied``
      error says "the kernel used more than N of memory and was stopped". Where
      no writable memory cgroup exists, :meth:`start` logs one warning and only
      the per-process ``RLIMIT_AS`` applies.
    * ``runner_args`` are appended to the runner's command line;
      ``runner_command`` replaces ``[python, "-m", "kcr_runner"]`` (tests).
    * :meth:`close` deletes any pod still running: nothing is left behind.
    """

    name = "local"

    def __init__(
        self,
        root_dir: Path,
        *,
        sandbox: bool = True,
        limits: SandboxLimits | None = None,
        runner_args: list[str] | None = None,
        python: str = sys.executable,
        log: logging.Logger | None = None,
        bwrap: str = "bwrap",
        prlimit: str = "prlimit",
        runner_command: list[str] | None = None,
        sandbox_uid: int | None = DEFAULT_SANDBOX_HOST_UID,
        memory_limit: int | None = None,
        memory_limits: dict[str, int | None] | None = None,
        cgroups: PodCgroups | None = None,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self.pods_dir = self.root_dir / "pods"
        self.sandboxed = sandbox
        self.limits = limits or SandboxLimits()
        self.runner_args = list(runner_args or [])
        self.python = python
        self.runner_command = list(runner_command or [python, "-m", "kcr_runner"])
        self.log = log or logging.getLogger("kcr_kernels.backends.local")
        self._sandbox_uid = sandbox_uid if os.geteuid() == 0 else None
        self.sandbox = Sandbox(
            self.root_dir / "sandbox",
            limits=self.limits,
            bwrap=bwrap,
            prlimit=prlimit,
            host_uid=self._sandbox_uid,
        )
        self.memory_limit = memory_limit
        self.memory_limits = dict(memory_limits or {})
        self.cgroups = cgroups if cgroups is not None else PodCgroups()
        self._pods: dict[str, Pod] = {}
        self._uids_in_use: set[int] = set()
        self._setpriv = shutil.which("setpriv")

    @property
    def host_uid(self) -> int | None:
        """The host uid the sandboxed worker runs as, when it is not the gateway's own."""
        return self._sandbox_uid if self.sandboxed else None

    def _take_uid(self, busy: set[int]) -> int | None:
        """A host uid no live pod has and that owns no process in ``busy`` (another gateway
        on this host, or a bridge kernel's local runner, hands out the same range);
        ``None``: the sandbox is not switched."""
        base = self.host_uid
        if base is None:
            return None
        for uid in range(base, base + SANDBOX_UID_RANGE):
            if uid not in self._uids_in_use and uid not in busy:
                self._uids_in_use.add(uid)
                return uid
        raise PodStartError(
            f"all {SANDBOX_UID_RANGE} sandbox uids from {base} are in use by live pods"
        )

    def pod_uid(self, pod: Pod) -> int | None:
        """The host uid ``pod``'s sandbox runs as (``None``: the gateway's own)."""
        return pod.meta.get("host_uid")

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Check prerequisites and clear pods a killed gateway left behind."""
        if self.sandboxed:
            await asyncio.to_thread(self.sandbox.check)
            await asyncio.to_thread(self.sandbox.write_etc)
            working = await asyncio.to_thread(self.cgroups.probe)
            if self.limits.processes is not None and "pids" not in working:
                self.log.warning(
                    "no writable pids cgroup: the worker process cap relies on RLIMIT_NPROC, "
                    "which the kernel does not enforce when the gateway runs as root"
                )
                self.cgroups.roots.pop("pids", None)
            if "cpu" not in working:
                self.log.info(
                    "no writable cpu cgroup: kernels share the CPU as processes, not as "
                    "equal groups (a kernel with many busy processes gets more)"
                )
                self.cgroups.roots.pop("cpu", None)
            capped = {lang: m for lang, m in self.memory_limits.items() if m}
            if self.memory_limit or capped:
                if "memory" not in working:
                    self.log.warning(
                        "no writable memory cgroup (cgroup v%s): the per-kernel memory cap "
                        "is NOT enforced; each kernel process is only limited by RLIMIT_AS (%s)",
                        self.cgroups.version,
                        format_bytes(self.limits.address_space)
                        if self.limits.address_space
                        else "none",
                    )
                    self.cgroups.roots.pop("memory", None)
                else:
                    self.log.info(
                        "per-kernel memory cap: %s (cgroup v%s)%s",
                        format_bytes(self.memory_limit) if self.memory_limit else "none",
                        self.cgroups.version,
                        "".join(f", {k}: {format_bytes(v)}" for k, v in sorted(capped.items())),
                    )
        else:
            self.log.warning(
                "pods are NOT sandboxed (allow_unsandboxed): user code runs as %s with "
                "this gateway's file system and network access",
                os.getuid(),
            )
        if self._setpriv is None:
            self.log.warning(
                "setpriv (util-linux) not found: runners will not die if the gateway is killed"
            )
        await asyncio.to_thread(self._clear_leftovers)

    def _clear_leftovers(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        for old in self.pods_dir.iterdir():
            if old.name in self._pods:
                continue
            self.log.info("removing pod %s left by a previous gateway", old.name)
            self._remove_cgroup_blocking(old.name)
            shutil.rmtree(old, ignore_errors=True)

    async def close(self) -> None:
        """Delete every pod still running (the pool normally did already)."""
        await asyncio.gather(*(self.delete(p) for p in list(self._pods.values())))

    # -- pods --------------------------------------------------------------------------

    async def create(self, language: str, workspace: Path | None = None) -> Pod:
        """Start a pod. ``workspace``: an existing host folder to bind at ``/work`` instead
        of a fresh one (the provisioner's local mode binds the notebook's folder); it is
        never chowned nor removed, and the sandbox runs as this process's own uid so the
        files it writes there belong to the user who started the kernel."""
        name = f"kcr-{language}-{secrets.token_hex(5)}"
        token = secrets.token_urlsafe(32)
        pod = Pod(name=name, language=language, token=token)
        own_folder = workspace is not None
        if workspace is None:
            workspace = self.pods_dir / name / "work"
            await asyncio.to_thread(workspace.mkdir, parents=True)
        files_identity: list[str] = []
        busy = await asyncio.to_thread(_process_owners) if self.host_uid is not None else set()
        pod_uid = None if own_folder else self._take_uid(busy)
        if pod_uid is not None:
            pod.meta["host_uid"] = pod_uid
            await asyncio.to_thread(os.chown, workspace, pod_uid, pod_uid)
            await asyncio.to_thread(os.chmod, workspace, 0o700)
            files_identity = ["--files-uid", str(pod_uid), "--files-gid", str(pod_uid)]
        ready = asyncio.get_running_loop().create_future()
        # A pod deleted while starting fails this future with nobody waiting: that is
        # expected, not an "exception never retrieved".
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        pod.meta.update(
            workspace=workspace,
            stderr=collections.deque(maxlen=_STDERR_TAIL),
            ready=ready,
        )
        prefix: list[str] = []
        memory_args: list[str] = []
        runner_groups: list[Path] = []
        if self.sandboxed:
            cgroup = await asyncio.to_thread(
                self.cgroups.create,
                name,
                pids_max=self.limits.processes,
                memory_max=self.memory_for(language),
                cpu_weight=CPU_SHARES,
            )
            if cgroup is not None:
                pod.meta["cgroup"] = cgroup
                if cgroup.memory is not None:
                    memory_args = ["--memory-cgroup", str(cgroup.memory)]
                runner_groups = list(cgroup.runner)
            prefix = self.sandbox.prefix(workspace, cgroup=cgroup, host_uid=pod_uid)
        cmd = [
            *self.runner_command,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workspace",
            str(workspace),
            "--language",
            language,
            "--worker-prefix",
            json.dumps(prefix),
            *files_identity,
            *memory_args,
            *self.runner_args,
        ]
        if self._setpriv:
            cmd = [self._setpriv, "--pdeathsig", "KILL", "--", *cmd]
        if runner_groups:  # the runner's CPU group (cgroup v1): its children inherit it
            cmd = ["/bin/sh", "-c", JOIN_CGROUPS, "kcr-runner-cgroup", *runner_groups, "--", *cmd]
        env = {k: os.environ[k] for k in _ENV_PASSTHROUGH if k in os.environ}
        env["KCR_RUNNER_TOKEN"] = token
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._pods[name] = pod
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,  # EOF when the gateway dies
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=str(workspace),
            )
        except OSError as e:
            await self.delete(pod)
            raise PodStartError(f"could not start a {language} runner ({cmd[0]}): {e}")
        pod.meta["process"] = proc
        pod.meta["readers"] = [
            asyncio.create_task(self._read_stdout(pod, proc)),
            asyncio.create_task(self._read_stderr(pod, proc)),
        ]
        self.log.debug("pod %s: runner pid %s", name, proc.pid)
        return pod

    def memory_for(self, language: str) -> int | None:
        """The memory cap of ``language``'s pods in bytes (``None``: no cap)."""
        if language in self.memory_limits:
            return self.memory_limits[language]
        return self.memory_limit

    async def _read_stdout(self, pod: Pod, proc: asyncio.subprocess.Process) -> None:
        ready: asyncio.Future = pod.meta["ready"]
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not ready.done() and line.startswith(READY_PREFIX):
                try:
                    ready.set_result(json.loads(line[len(READY_PREFIX) :]))
                except ValueError as e:
                    ready.set_exception(PodStartError(f"bad ready line {line!r}: {e}"))
            else:
                self.log.debug("pod %s stdout: %s", pod.name, line)
        if not ready.done():
            ready.set_exception(EOFError("runner closed stdout before it was ready"))

    async def _read_stderr(self, pod: Pod, proc: asyncio.subprocess.Process) -> None:
        tail: collections.deque = pod.meta["stderr"]
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            self.log.debug("pod %s: %s", pod.name, line)

    def stderr_tail(self, pod: Pod, lines: int = 15) -> str:
        """The last ``lines`` lines the pod's runner wrote to stderr."""
        return "\n".join(list(pod.meta.get("stderr", ()))[-lines:])

    async def wait_ready(self, pod: Pod, timeout: float) -> Pod:
        deadline = time.monotonic() + timeout
        try:
            await self._wait_ready(pod, deadline)
        except asyncio.CancelledError:
            await self.delete(pod)
            raise
        except Exception as e:
            await self.delete(pod)
            tail = self.stderr_tail(pod)
            detail = f"\nrunner stderr (last lines):\n{tail}" if tail else ""
            if isinstance(e, TimeoutError):
                why = f"not ready after {timeout:g} s"
            else:
                why = str(e)
            raise PodStartError(f"{pod.language} pod {pod.name} failed to start: {why}{detail}")
        return pod

    async def _wait_ready(self, pod: Pod, deadline: float) -> None:
        proc: asyncio.subprocess.Process = pod.meta["process"]
        remaining = deadline - time.monotonic()
        try:
            info = await asyncio.wait_for(asyncio.shield(pod.meta["ready"]), max(remaining, 0))
        except EOFError:
            code = await asyncio.wait_for(proc.wait(), 5)
            raise RuntimeError(f"runner exited with code {code} before it was ready")
        url = f"http://{info['host']}:{info['port']}"
        while True:
            health = await self.healthz(pod, url=url, seconds=max(deadline - time.monotonic(), 0.1))
            if health is not None and health.get("status") == "ok":
                pod.url = url
                pod.meta["runner_pid"] = info.get("pid")
                return
            if proc.returncode is not None:
                raise RuntimeError(f"runner exited with code {proc.returncode}")
            if time.monotonic() >= deadline:
                raise TimeoutError
            await asyncio.sleep(0.05)

    async def healthz(self, pod: Pod, *, url: str | None = None, seconds: float = 5.0):
        """The runner's ``/healthz`` JSON, or ``None`` when it does not answer."""
        url = url or pod.url
        if url is None:
            return None
        request = HTTPRequest(
            f"{url}/healthz",
            headers={"Authorization": f"Bearer {pod.token}"},
            connect_timeout=seconds,
            request_timeout=seconds,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
            return json.loads(response.body)
        except (HTTPClientError, OSError, ValueError, TimeoutError):
            return None

    async def delete(self, pod: Pod) -> None:
        if self._pods.get(pod.name) is not pod:
            return
        proc: asyncio.subprocess.Process | None = pod.meta.get("process")
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        cgroup: PodCgroup | None = pod.meta.get("cgroup")
        if cgroup is not None:
            await asyncio.to_thread(cgroup.kill_all)
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), _EXIT_WAIT)  # reap: no zombies
            except ProcessLookupError:
                pass
            except TimeoutError:  # never hang a shutdown on one process
                self.log.error(
                    "pod %s: runner pid %s did not exit %ss after SIGKILL",
                    pod.name,
                    proc.pid,
                    _EXIT_WAIT,
                )
            for task in pod.meta.get("readers", ()):
                task.cancel()
        ready = pod.meta.get("ready")
        if ready is not None and not ready.done():
            ready.cancel()
        if cgroup is not None:
            await self._remove_cgroup(cgroup)
        await asyncio.to_thread(shutil.rmtree, self.pods_dir / pod.name, True)
        pod.url = None
        self._pods.pop(pod.name, None)
        self._uids_in_use.discard(pod.meta.get("host_uid"))
        self.log.debug("pod %s deleted", pod.name)

    async def _remove_cgroup(self, cgroup: PodCgroup) -> None:
        # The sandboxed processes die asynchronously after SIGKILL; the empty
        # cgroup can only be removed once they are gone.
        for _ in range(100):
            if await asyncio.to_thread(cgroup.remove):
                return
            await asyncio.to_thread(cgroup.kill_all)
            await asyncio.sleep(0.02)
        self.log.warning("could not remove cgroups %s (processes still in them)", cgroup.folders)

    def _remove_cgroup_blocking(self, name: str) -> None:
        cgroup = self.cgroups.existing(name)
        for _ in range(100):
            cgroup.kill_all()
            if cgroup.remove():
                return
            time.sleep(0.02)

    async def alive(self, pod: Pod) -> bool:
        proc = pod.meta.get("process")
        return proc is not None and proc.returncode is None and pod.name in self._pods

    async def list(self, language: str | None = None) -> list[Pod]:
        return [p for p in self._pods.values() if language is None or p.language == language]

    def workspace(self, pod: Pod) -> Path:
        """The host folder bound at ``/work`` in the pod's sandbox."""
        return pod.meta["workspace"]

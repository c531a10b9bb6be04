"""FakeKubelet: turns pods created on a :class:`FakeKubeApiServer` into real runner processes.

For every pod ADDED to the API-server double it starts ``python -m kcr_runner``
with the pod's first container's ``args`` and ``env`` (``--host`` becomes
127.0.0.1, ``--port`` 0 and ``--workspace`` a fresh folder, since every "pod"
shares the loopback interface), its worker in the bubblewrap sandbox of
:mod:`kcr_kernels.backends.sandbox` when the host allows one. When the runner
prints its ``KCR_RUNNER_READY`` line the kubelet writes what a real kubelet
reports: ``status.phase=Running``, ``status.podIP=127.0.0.1``, the ``Ready``
condition, a running container status, plus the annotation
``kcr.dev/runner-port`` with the port the runner picked (on a real cluster
every pod has its own IP and the runner listens on the container port).
A runner that exits on its own turns the pod ``Failed`` (restartPolicy Never);
a deleted pod's runner is killed and its workspace removed.

Test controls: :meth:`kill_runner` (a crash inside the pod), :meth:`oom_kill` (the
container went over its memory limit: killed, then reported ``OOMKilled`` with exit code
137, in that order, as a real kubelet does), :meth:`running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from kcr_kernels.backends.sandbox import Sandbox, SandboxUnavailable

from .kube_api import FakeKubeApiServer

READY_PREFIX = "KCR_RUNNER_READY "
RUNNER_PORT_ANNOTATION = "kcr.dev/runner-port"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    """Runs one real ``kcr-runner`` process per pod of a :class:`FakeKubeApiServer`.

    ``sandbox=None`` sandboxes workers when bubblewrap works here, ``True``
    requires it, ``False`` never sandboxes. Use as a context manager.
    """

    def __init__(
        self,
        api: FakeKubeApiServer,
        *,
        sandbox: bool | None = None,
        runner_command: list[str] | None = None,
    ):
        self.api = api
        self.runner_command = runner_command or [sys.executable, "-m", "kcr_runner"]
        self._root = Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        self._sandbox: Sandbox | None = None
        if sandbox is not False:
            candidate = Sandbox(self._root / "sandbox")
            try:
                candidate.check()
                candidate.write_etc()
                self._sandbox = candidate
            except SandboxUnavailable:
                if sandbox:
                    raise
        self._procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._deleted: set[tuple[str, str]] = set()
        self._oom: set[tuple[str, str]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def sandboxed(self) -> bool:
        return self._sandbox is not None

    def start(self) -> FakeKubelet:
        self._thread.start()
        self.api.subscribe(self._on_event)
        for pod in self.api.pods():
            self._on_event("ADDED", pod)
        return self

    def stop(self) -> None:
        async def kill_all() -> None:
            for key in list(self._procs):
                self._deleted.add(key)
                await self._kill(key)

        asyncio.run_coroutine_threadsafe(kill_all(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> set[str]:
        """Names of pods whose runner process is alive."""
        return {name for (_, name), p in list(self._procs.items()) if p.returncode is None}

    def kill_runner(self, namespace: str, name: str) -> None:
        """SIGKILL a pod's runner, as a crash inside the container would."""

        async def kill() -> None:
            proc = self._procs.get((namespace, name))
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        asyncio.run_coroutine_threadsafe(kill(), self._loop).result(10)

    def oom_kill(self, namespace: str, name: str) -> None:
        """Kill a pod's container as the kernel's OOM killer does at the memory limit."""
        self._loop.call_soon_threadsafe(self._oom.add, (namespace, name))
        self.kill_runner(namespace, name)

    # -- reacting to the API server ----------------------------------------------------

    def _on_event(self, kind: str, pod: dict) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "ADDED":
            asyncio.run_coroutine_threadsafe(self._run(key, pod), self._loop)
        elif kind == "DELETED":
            self._loop.call_soon_threadsafe(self._deleted.add, key)
            asyncio.run_coroutine_threadsafe(self._kill(key), self._loop)

    def _command(self, pod: dict, workspace: Path) -> list[str]:
        container = pod["spec"]["containers"][0]
        args = list(container.get("args") or [])
        replace = {"--host": "127.0.0.1", "--port": "0", "--workspace": str(workspace)}
        out: list[str] = []
        skip = False
        for i, arg in enumerate(args):
            if skip:
                skip = False
                continue
            if arg in replace and i + 1 < len(args):
                out += [arg, replace.pop(arg)]
                skip = True
            else:
                out.append(arg)
        for flag, value in replace.items():
            out += [flag, value]
        if self._sandbox is not None:
            out += ["--worker-prefix", json.dumps(self._sandbox.prefix(workspace))]
        return [*self.runner_command, *out]

    async def _run(self, key: tuple[str, str], pod: dict) -> None:
        namespace, name = key
        workspace = self._root / namespace / name / "workspace"
        workspace.mkdir(parents=True)
        container = pod["spec"]["containers"][0]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for var in ("LANG", "COVERAGE_PROCESS_START"):
            if var in os.environ:
                env[var] = os.environ[var]
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
        proc = await asyncio.create_subprocess_exec(
            *self._command(pod, workspace),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(workspace),
            env=env,
        )
        self._procs[key] = proc
        if key in self._deleted:  # deleted while starting
            await self._kill(key)
            return
        port = None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text.startswith(READY_PREFIX):
                port = json.loads(text[len(READY_PREFIX) :])["port"]
                break
        if port is not None:
            self.api.update_pod(namespace, name, lambda p: _mark_running(p, port))
            await proc.stdout.read()  # drain until exit
        code = await proc.wait()
        if key not in self._deleted:
            reason = "OOMKilled" if key in self._oom else "Error"
            if reason == "OOMKilled":
                code = 137
            self.api.update_pod(namespace, name, lambda p: _mark_failed(p, code, reason))

    async def _kill(self, key: tuple[str, str]) -> None:
        proc = self._procs.get(key)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
        self._procs.pop(key, None)
        shutil.rmtree(self._root / key[0] / key[1], ignore_errors=True)


def _mark_running(pod: dict, port: int) -> None:
    pod["metadata"].setdefault("annotations", {})[RUNNER_PORT_ANNOTATION] = str(port)
    container = pod["spec"]["containers"][0]
    now = _now()
    pod["status"].update(
        phase="Running",
        podIP="127.0.0.1",
        podIPs=[{"ip": "127.0.0.1"}],
        hostIP="127.0.0.1",
        startTime=now,
        conditions=[
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        containerStatuses=[
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
        ],
    )


def _mark_failed(pod: dict, code: int, reason: str = "Error") -> None:
    container = pod["spec"]["containers"][0]
    now = _now()
    pod["status"].update(
        phase="Failed",
        conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": now}],
        containerStatuses=[
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now}},
            }
        ],
    )

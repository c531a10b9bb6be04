"""Local mode of the bridge kernel: no gateway, one sandboxed runner of its own.

The bridge starts one pod with :class:`~kcr_kernels.backends.local.LocalBackend`
(the runner on 127.0.0.1, its worker in a bubblewrap sandbox) and puts a
:class:`~kcr_kernels.session.KernelSession` in front of it: the Jupyter
protocol semantics (busy/idle, execute_input, stop_on_error, stdin routing)
are the session's, exactly as in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from ..backends.base import Pod
from ..backends.cgroups import parse_memory
from ..backends.local import LocalBackend
from ..backends.sandbox import SandboxUnavailable
from ..message_validation import BadMessage, error_reply, validate
from ..runner_client import RunnerClient
from ..session import KernelSession
from .sockets import KernelSockets

log = logging.getLogger("kcr.bridge.local")


class _ClientRoute:
    """A :class:`~kcr_kernels.session.KernelListener` for one client request.

    Replies go back to the ZMQ identities the request came from; stdin
    messages (``input_request``) use the same identities on the stdin socket,
    as jupyter_client gives its shell and stdin sockets one identity.
    """

    __slots__ = ("idents", "sockets")

    def __init__(self, sockets: KernelSockets, idents: list[bytes]):
        self.sockets = sockets
        self.idents = idents

    def send(self, channel: str, msg: dict) -> None:
        self.sockets.send(channel, msg, self.idents)


class _IopubListener:
    """The session's one attached listener: iopub goes to the PUB socket."""

    def __init__(self, sockets: KernelSockets):
        self.sockets = sockets

    def send(self, channel: str, msg: dict) -> None:
        self.sockets.send(channel, msg)


class LocalKernel:
    """One kernel on a runner this bridge started itself.

    Contract:

    * :meth:`start` starts the pod (``start_timeout`` seconds at most) and
      raises :class:`~kcr_kernels.backends.base.PodStartError` or
      :class:`~kcr_kernels.backends.sandbox.SandboxUnavailable` with the
      reason; ``allow_unsandboxed`` runs the worker without bubblewrap when
      the sandbox is unavailable (with a warning).
    * ``memory_limit`` (``"2Gi"``, bytes, ``None``/``"0"``: none) caps the kernel's memory,
      all its processes together, in a memory cgroup, as the gateway's local pods are
      capped; a kernel over it dies with "the kernel used more than N of memory".
      Where no writable memory cgroup exists the backend logs one warning.
    * :meth:`handle_raw` takes a verified client message.
    * ``shutdown_request`` is answered by the session, then ``on_exit(0)``;
      a pod that dies makes the kernel dead: ``on_exit(1)`` after a message
      on stderr (the pending request gets its ``KernelDied`` reply first).
    * :meth:`close` deletes the pod; nothing is left behind.
    * ``KERNEL_WORKING_DIR`` in ``env`` (a folder): the sandbox's working folder ``/work``
      is that folder, read-write (nothing else of the host is visible), so a notebook run
      from folder F reads and writes F's files as with a stock kernel.
    """

    def __init__(
        self,
        sockets: KernelSockets,
        *,
        data_dir: Path,
        language: str = "python",
        env: dict[str, str] | None = None,
        allow_unsandboxed: bool = False,
        start_timeout: float = 30.0,
        memory_limit: str | int | None = "2Gi",
        on_exit: Callable[[int], None],
    ):
        self.sockets = sockets
        self.language = language
        self.env = dict(env or {})
        self.on_exit = on_exit
        self.start_timeout = start_timeout
        self.allow_unsandboxed = allow_unsandboxed
        # KERNEL_WORKING_DIR (set by the provisioner from the notebook's folder, as Jupyter
        # Server and nbclient pass it): bound read-write as the sandbox's working folder.
        working_dir = self.env.get("KERNEL_WORKING_DIR", "")
        self.working_dir = Path(working_dir).resolve() if working_dir else None
        if self.working_dir is not None and not self.working_dir.is_dir():
            print(
                f"[kcr] KERNEL_WORKING_DIR {working_dir} is not a folder; "
                "the kernel works in a folder of its own",
                file=sys.stderr,
            )
            self.working_dir = None
        self.backend = LocalBackend(
            data_dir,
            sandbox=True,
            log=log,
            memory_limit=parse_memory(memory_limit),
            **({"sandbox_uid": None} if self.working_dir is not None else {}),
        )
        self.pod: Pod | None = None
        self.runner: RunnerClient | None = None
        self.session = KernelSession("local", username="kcr", on_shutdown=self._on_shutdown)
        self._closing = False

    async def start(self) -> None:
        if self.allow_unsandboxed:
            try:
                await asyncio.to_thread(self.backend.sandbox.check)
            except SandboxUnavailable as e:
                print(
                    f"[kcr] no sandbox ({e}); running the kernel WITHOUT isolation",
                    file=sys.stderr,
                )
                self.backend.sandboxed = False
        await self.backend.start()
        pod = await self.backend.create(self.language, workspace=self.working_dir)
        self.pod = await self.backend.wait_ready(pod, self.start_timeout)
        runner = RunnerClient(pod.url, pod.token, on_lost=self._on_pod_lost)
        await runner.connect()
        if self.env:
            await runner.set_env(self.env)
        self.runner = runner
        await self.session.attach_runner(runner)
        # Attached after the session's own start-up "idle": the bridge sends the
        # start-up statuses (starting, then idle) for both modes.
        self.session.add_listener(_IopubListener(self.sockets))

    def handle_raw(self, channel: str, idents: list[bytes], parts: list[bytes]) -> None:
        """Take a verified client message (serialized parts, as :class:`KernelSockets` gives);
        a malformed one is answered like the gateway answers it, or dropped."""
        unpack = self.sockets.session.unpack
        try:
            msg = {
                "header": unpack(parts[0]),
                "parent_header": unpack(parts[1]),
                "metadata": unpack(parts[2]),
                "content": unpack(parts[3]),
                "buffers": parts[4:],
                "channel": channel,
            }
        except ValueError as e:
            print(f"[kcr] dropped a {channel} message that is not JSON: {e}", file=sys.stderr)
            return
        route = _ClientRoute(self.sockets, idents)
        try:
            validate(msg)
        except BadMessage as e:
            reply = error_reply(msg, e.ename, str(e))
            print(f"[kcr] refused a {channel} message: {e}", file=sys.stderr)
            if reply is not None:
                self.session.reply(
                    route, reply.channel, reply.msg_type, reply.content, reply.parent
                )
            return
        self.session.handle(route, msg)

    async def interrupt(self) -> None:
        result = await self.session.interrupt()
        if result.get("status") != "ok":
            print(f"[kcr] interrupt failed: {result.get('evalue')}", file=sys.stderr)

    async def _on_shutdown(self, restart: bool) -> None:
        # jupyter_client restarts a kernel by starting a new bridge process,
        # so both kinds of shutdown end this one.
        self.on_exit(0)

    def _on_pod_lost(self) -> None:
        if self._closing:
            return
        print("[kcr] the kernel's runner stopped; the kernel is dead", file=sys.stderr)
        # Let the session send the pending request's KernelDied reply first.
        asyncio.get_running_loop().call_later(0.2, self.on_exit, 1)

    async def close(self) -> None:
        self._closing = True
        await self.session.close()
        if self.pod is not None:
            await self.backend.delete(self.pod)
        await self.backend.close()

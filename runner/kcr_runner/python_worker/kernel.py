"""ipykernel's own kernel with kcr's extension points (``-m kcr_runner.python_worker.kernel``).

This is stock ``IPKernelApp`` (so ``'IPKernelApp' in get_ipython().config``,
``ZMQInteractiveShell``, the comm manager, the display publisher and the debugpy-based debugger
are ipykernel's) with ``kernel_class`` set to :class:`KCRKernel`, an ``IPythonKernel`` that adds
message handlers -- ipykernel's documented way to extend a kernel -- and nothing else:

shell channel (run on the main thread, in order with cells)
    ``kcr_snapshot_request`` ``{"max_bytes": N}`` -> ``kcr_snapshot_reply`` ``{"status": "ok",
    "names", "skipped"}`` with the state blob as the message's one binary buffer, or
    ``{"status": "error", "reason": "state_too_large", "message"}``;
    ``kcr_restore_request`` (blob as buffer) -> ``kcr_restore_reply`` ``{"status": "ok",
    "restored", "errors"}`` or ``{"status": "error", "reason": "bad_state", "message"}``.
control channel (answered at once, even while a cell runs)
    ``kcr_interrupt_request`` ``{"msg_id", "reason": "user"|"timeout", "message"}``: interrupt
    the execute ``msg_id``. If it is running, its main thread gets ``KeyboardInterrupt`` (or
    ``TimeoutError`` for a timeout); if it has not started yet, it ends with
    ``KeyboardInterrupt`` before running; if it is over, nothing happens. No reply.
    ``kcr_set_env_request`` ``{"env": {...}}`` -> ``kcr_set_env_reply``: merged into
    ``os.environ``.

The kernel's sockets are only reachable from inside the pod's sandbox (``ipc`` files in its
private /tmp); the relay (:mod:`kcr_runner.python_worker.relay`) is its one client.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import zmq
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from traitlets import DottedObjectName, Float

from .. import __version__
from . import iopub, state


class _NoShellChannelThread:
    """Stands in for ipykernel 7's shell-channel thread, which kcr turns off.

    That thread only receives shell messages and hands them to the main thread (for kernel
    subshells, which the gateway does not route): two thread hops per request. This stand-in is
    falsy, so ipykernel takes its documented single-thread path (shell messages on the main
    thread's loop), and names the main thread as ``parent_thread``, where ipykernel's code for
    top-level ``await`` cells looks for it.
    """

    parent_thread = threading.main_thread()

    def __bool__(self) -> bool:
        return False


class KCRKernel(IPythonKernel):
    """``IPythonKernel`` plus kcr's snapshot/restore, never-lost interrupts and env updates."""

    implementation = "kcr-python"
    implementation_version = __version__
    # ipykernel sleeps 0.5 ms before each execute_reply so iopub output tends to arrive first;
    # the relay already holds every reply until the kernel's iopub idle, so no sleep is needed.
    _execute_sleep = Float(0.0).tag(config=True)

    @property
    def _supports_kernel_subshells(self) -> bool:
        return False  # no shell-channel thread (see _NoShellChannelThread)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.shell_handlers["kcr_snapshot_request"] = self.kcr_snapshot_request
        self.shell_handlers["kcr_restore_request"] = self.kcr_restore_request
        self.control_handlers["kcr_interrupt_request"] = self.kcr_interrupt_request
        self.control_handlers["kcr_set_env_request"] = self.kcr_set_env_request
        self._kcr_lock = threading.Lock()
        self._kcr_running: str | None = None  # msg_id of the execute inside do_execute
        self._kcr_pending: str | None = None  # msg_id of an execute interrupted before it ran
        self._kcr_exc: BaseException | None = None  # what the next SIGINT raises instead
        # IPython's own hook for exception display: an interrupt's traceback ends in the
        # user's code, not in this kernel's SIGINT handler.
        self.shell.set_custom_exc((KeyboardInterrupt, TimeoutError), _interrupt_traceback)
        # exit() in a cell: ipykernel answers with an ask_exit payload and stops its process
        # 0.1 s later, for jupyter_client's restarter to start a new one. A pod has no
        # restarter (the gateway replaces pods), so the kernel answers the same and stays.
        self.shell.ask_exit = self._kcr_ask_exit

    def _kcr_ask_exit(self) -> None:
        keep = self.shell.keepkernel_on_exit
        self.shell.payload_manager.write_payload({"source": "ask_exit", "keepkernel": keep})

    # -- kernel_info ------------------------------------------------------------------------
    @property
    def kernel_info(self) -> dict[str, Any]:
        from ipykernel.debugger import _is_debugpy_available

        info = dict(super().kernel_info)
        # Subshells are a kernel-side feature the gateway does not route: do not offer them.
        features = [f for f in info.get("supported_features", []) if f != "kernel subshells"]
        info["supported_features"] = features
        info["debugger"] = bool(_is_debugpy_available)  # what JupyterLab looks at
        return info

    # -- interrupts -------------------------------------------------------------------------
    def pre_handler_hook(self) -> None:
        self.saved_sigint_handler = signal.signal(signal.SIGINT, self._kcr_sigint)

    def _kcr_sigint(self, signum, frame) -> None:
        __tracebackhide__ = True  # IPython leaves this frame out of the user's traceback
        if self._kcr_running is None:
            return  # late: the cell it was meant for is over
        exc, self._kcr_exc = self._kcr_exc, None
        raise exc if exc is not None else KeyboardInterrupt()

    async def kcr_interrupt_request(self, stream, ident, parent) -> None:
        content = parent.get("content") or {}
        target = content.get("msg_id")
        with self._kcr_lock:
            if self._kcr_running is not None and self._kcr_running == target:
                if content.get("reason") == "timeout":
                    self._kcr_exc = TimeoutError(content.get("message") or "the cell timed out")
                # To the main thread itself: a signal to the process could land on another
                # thread and leave a blocking call (time.sleep) on the main thread asleep.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            elif target:
                self._kcr_pending = target

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, **kwargs):  # fmt: skip
        msg_id = self.get_parent("shell").get("header", {}).get("msg_id")
        with self._kcr_lock:
            interrupted = self._kcr_pending is not None and self._kcr_pending == msg_id
            self._kcr_pending = None
            self._kcr_running = None if interrupted else msg_id
        if interrupted:
            return self._interrupted_before_run()
        try:
            return await super().do_execute(
                code, silent, store_history, user_expressions, allow_stdin, **kwargs
            )
        except KeyboardInterrupt:  # landed outside IPython's own handler
            self.shell.showtraceback()
            return self._error_reply()
        finally:
            with self._kcr_lock:
                self._kcr_running = None
                self._kcr_exc = None

    def _interrupted_before_run(self) -> dict[str, Any]:
        self.shell.showtraceback(
            (KeyboardInterrupt, KeyboardInterrupt("interrupted before it ran"), None)
        )
        return self._error_reply()

    def _error_reply(self) -> dict[str, Any]:
        etype, evalue = KeyboardInterrupt.__name__, "interrupted"
        tb = getattr(self.shell, "_last_traceback", None) or []
        return {
            "status": "error",
            "execution_count": self.shell.execution_count,
            "ename": etype,
            "evalue": evalue,
            "traceback": tb,
            "user_expressions": {},
            "payload": [],
        }

    # -- environment ------------------------------------------------------------------------
    async def kcr_set_env_request(self, stream, ident, parent) -> None:
        env = (parent.get("content") or {}).get("env") or {}
        os.environ.update({str(k): str(v) for k, v in env.items()})
        self.session.send(stream, "kcr_set_env_reply", {"status": "ok"}, parent, ident=ident)

    # -- state ------------------------------------------------------------------------------
    async def kcr_snapshot_request(self, stream, ident, parent) -> None:
        max_bytes = int((parent.get("content") or {}).get("max_bytes") or (1 << 30))
        buffers: list[bytes] = []
        try:
            blob, header = state.snapshot(self.shell, max_bytes)
        except state.StateTooLarge as exc:
            content = {"status": "error", "reason": "state_too_large", "message": str(exc)}
        else:
            names = header["names"] + sorted(header["modules"]) + sorted(header["imports"])
            content = {"status": "ok", "names": names, "skipped": header["skipped"]}
            buffers = [blob]
        self.session.send(
            stream, "kcr_snapshot_reply", content, parent, ident=ident, buffers=buffers
        )

    async def kcr_restore_request(self, stream, ident, parent) -> None:
        buffers = parent.get("buffers") or []
        try:
            blob = bytes(memoryview(buffers[0])) if buffers else b""
            content = {"status": "ok", **state.restore(self.shell, blob)}
        except (state.BadStateBlob, ValueError) as exc:
            content = {"status": "error", "reason": "bad_state", "message": str(exc)}
        self.session.send(stream, "kcr_restore_reply", content, parent, ident=ident)


def _interrupt_traceback(shell, etype, value, tb, tb_offset=None):
    """IPython custom-exception handler: shows the usual traceback, minus a last frame that is
    :meth:`KCRKernel._kcr_sigint` (IPython hides ``__tracebackhide__`` frames, but never the
    last one)."""
    last_visible, node = None, tb
    while node is not None:
        if node.tb_next is None and node.tb_frame.f_code is KCRKernel._kcr_sigint.__code__:
            if last_visible is not None:
                last_visible.tb_next = None
            break
        last_visible, node = node, node.tb_next
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)  # IPython's usual display


class KCRKernelApp(IPKernelApp):
    """``IPKernelApp`` running :class:`KCRKernel` (its name stays ``IPKernelApp`` in config)."""

    name = "ipython-kernel"
    outstream_class = DottedObjectName("kcr_runner.python_worker.iopub.KCROutStream").tag(
        config=True
    )

    def init_control(self, context) -> None:
        super().init_control(context)
        if getattr(self, "shell_channel_thread", None) is not None:
            self.shell_channel_thread = _NoShellChannelThread()

    def init_iopub(self, context) -> None:
        # Stock IPKernelApp.init_iopub with a bounded, non-dropping queue (see .iopub).
        self.iopub_socket = context.socket(zmq.XPUB)
        self.iopub_socket.linger = 1000
        iopub.configure_socket(self.iopub_socket)
        self.iopub_port = self._bind_socket(self.iopub_socket, self.iopub_port)
        self.configure_tornado_logger()
        self.iopub_thread = iopub.KCRIOPubThread(self.iopub_socket, pipe=True, session=self.session)
        self.iopub_thread.start()
        self.iopub_socket = self.iopub_thread.background_socket

    def init_signal(self) -> None:
        # As stock: SIGINT is ignored between requests; KCRKernel raises it during a cell.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> None:
    argv = sys.argv[1:]
    KCRKernelApp.launch_instance(
        argv=argv, kernel_class="kcr_runner.python_worker.kernel.KCRKernel"
    )


if __name__ == "__main__":
    main()

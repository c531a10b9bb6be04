"""The bridge kernel process: ZMQ sockets wired to a gateway kernel or a local one.

jupyter_client (nbclient, papermill, ``jupyter execute``, Jupyter Server)
talks to kernels only over ZMQ. ``python -m kcr_kernels.bridge -f
CONNECTION_FILE`` (:func:`main`) binds the connection file's sockets
(:mod:`.sockets`) and serves the kernel:

* **gateway mode** (``--gateway-url`` or ``$KCR_GATEWAY_URL``): relays every
  message to a kernel on a kcr gateway over its WebSocket
  (:mod:`.gateway`). ``--kernel-id`` attaches to a kernel the provisioner
  created; without it the bridge creates one. The token comes from
  ``$KCR_GATEWAY_TOKEN`` (never the command line, where ``ps`` shows it).
* **local mode** (no gateway): starts one sandboxed runner itself
  (:mod:`.local`).

Start-up on iopub, as ipykernel's: each subscriber gets ``iopub_welcome``;
``status: starting`` once the sockets are bound, ``status: idle`` once the
kernel serves requests (requests sent before wait in ZMQ). Arguments meant
for ipykernel are accepted and ignored (:mod:`.args`).

Signals: SIGINT interrupts the running cell (jupyter_client's ``signal``
interrupt mode), SIGTERM shuts the kernel down and releases the remote
kernel. The bridge also exits when the process that started it dies
(``$JPY_PARENT_PID``). Exit status: 0 after a shutdown, 1 when the kernel
died or could not start (the reason on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from .args import BridgeArgs, kernel_env, parse_args, warn_ignored
from .sockets import ConnectionFileError, KernelSockets, read_connection_file

log = logging.getLogger("kcr.bridge")


class BridgedKernel(Protocol):
    """What serves the kernel behind the sockets (:class:`.gateway.GatewayKernel`,
    :class:`.local.LocalKernel`)."""

    async def start(self) -> None:
        """Make the kernel ready to serve requests; raise with the reason when it cannot."""

    def handle_raw(self, channel: str, idents: list[bytes], parts: list[bytes]) -> None:
        """Take one verified client message (header, parent, metadata, content, *buffers)."""

    async def interrupt(self) -> None:
        """Interrupt the running cell (SIGINT to the bridge)."""

    async def close(self) -> None:
        """Release the kernel (delete the remote kernel or the local pod)."""


class Bridge:
    """Wires the ZMQ sockets to a gateway kernel or a local one; see the module docstring."""

    def __init__(self, args: BridgeArgs):
        self.args = args
        self.exit_code: int | None = None
        self._stopped = asyncio.Event()
        self.kernel: BridgedKernel | None = None
        self._own_data_dir: Path | None = None
        self._interrupts: set[asyncio.Future] = set()
        info = read_connection_file(args.connection_file)
        self.sockets = KernelSockets(info, self._on_message)

    def exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._stopped.set()

    def _make_kernel(self) -> BridgedKernel:
        args = self.args
        env = kernel_env(os.environ)
        if args.gateway_url:
            from .gateway import GatewayKernel
            from .gateway_api import GatewayAPI

            api = GatewayAPI(args.gateway_url, os.environ.get("KCR_GATEWAY_TOKEN", ""))
            return GatewayKernel(
                self.sockets,
                api,
                kernel_id=args.kernel_id,
                kernel_name=args.kernel_name or f"kcr-{args.language}",
                env=env,
                reconnect_timeout=args.reconnect_timeout,
                folder_sync=os.environ.get("KCR_FOLDER_SYNC", "1") not in ("", "0", "false"),
                on_exit=self.exit,
            )
        from .local import LocalKernel

        if args.data_dir:
            data_dir = Path(args.data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
        else:
            data_dir = self._own_data_dir = Path(tempfile.mkdtemp(prefix="kcr-bridge-"))
        return LocalKernel(
            self.sockets,
            data_dir=data_dir,
            language=args.language,
            env=env,
            allow_unsandboxed=args.allow_unsandboxed,
            start_timeout=args.start_timeout,
            memory_limit=args.memory_limit,
            on_exit=self.exit,
        )

    def _on_message(self, channel: str, idents: list[bytes], parts: list[bytes]) -> None:
        self.kernel.handle_raw(channel, idents, parts)

    def _on_sigint(self) -> None:
        if self.kernel is not None:
            self._interrupts.add(task := asyncio.ensure_future(self.kernel.interrupt()))
            task.add_done_callback(self._interrupts.discard)

    def _publish_status(self, state: str) -> None:
        """``status`` with no parent on iopub: ``starting`` at bind, ``idle`` once serving
        (what ipykernel's start-up sends; subscribers are welcomed before either)."""
        msg = self.sockets.session.msg("status", {"execution_state": state})
        msg["parent_header"] = {}
        self.sockets.send("iopub", msg)

    async def _watch_parent(self) -> None:
        """Exit when the process that launched the bridge is gone (no orphans)."""
        parent = int(os.environ.get("JPY_PARENT_PID", "0") or 0)
        if parent <= 1:
            return
        while not self._stopped.is_set():
            if os.getppid() != parent:
                print("[kcr] the process that started this kernel is gone", file=sys.stderr)
                self.exit(0)
                return
            await asyncio.sleep(1.0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self.exit, 0)
        self.sockets.bind()
        self._publish_status("starting")
        watcher = asyncio.create_task(self._watch_parent())
        try:
            self.kernel = self._make_kernel()
            start = asyncio.ensure_future(self.kernel.start())
            stopped = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # SIGTERM while starting
                start.cancel()
                with contextlib.suppress(BaseException):
                    await start
            else:
                stopped.cancel()
                start.result()
                self._publish_status("idle")
                self.sockets.start_reading()
                await self._stopped.wait()
        except Exception as e:
            print(f"[kcr] the kernel could not start: {e}", file=sys.stderr)
            self.exit(1)
        finally:
            watcher.cancel()
            if self.kernel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.kernel.close(), 15)
            self.sockets.close()
            if self._own_data_dir is not None:
                shutil.rmtree(self._own_data_dir, ignore_errors=True)
        return self.exit_code or 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warn_ignored(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="[kcr-bridge %(levelname)s] %(message)s"
    )
    # KernelSession builds its messages with an unsigned Session (the bridge
    # signs on the wire); jupyter_client warns about that on the traitlets logger.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    try:
        bridge = Bridge(args)
    except ConnectionFileError as e:
        print(f"kcr-bridge: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(bridge.run()))

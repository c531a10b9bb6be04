"""The bridge kernel: a local ZMQ kernel process in front of a kcr kernel.

jupyter_client (nbclient, papermill, ``jupyter execute``, Jupyter Server)
talks to kernels only over ZMQ. ``python -m kcr_kernels.bridge -f
CONNECTION_FILE`` binds the connection file's sockets and serves the kernel:

* **gateway mode** (``--gateway-url`` or ``$KCR_GATEWAY_URL``): relays every
  message to a kernel on a kcr gateway over its WebSocket
  (:mod:`kcr_kernels.bridge_gateway`). ``--kernel-id`` attaches to a kernel
  the provisioner created; without it the bridge creates one. The token comes
  from ``$KCR_GATEWAY_TOKEN`` (never the command line, where ``ps`` shows it).
* **local mode** (no gateway): starts one sandboxed runner itself
  (:mod:`kcr_kernels.bridge_local`).

Signals: SIGINT interrupts the running cell (jupyter_client's ``signal``
interrupt mode), SIGTERM shuts the kernel down and releases the remote
kernel. The bridge also exits when the process that started it dies
(``$JPY_PARENT_PID``). Exit status: 0 after a shutdown, 1 when the kernel
died or could not start (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from .bridge_zmq import ConnectionFileError, KernelSockets, read_connection_file

log = logging.getLogger("kcr.bridge")

#: Environment passed to the kernel: what a gateway accepts from a start request.
KERNEL_ENV_PREFIX = "KERNEL_"


def kernel_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The ``KERNEL_*`` variables of ``environ`` (passed on to the remote kernel)."""
    return {k: v for k, v in environ.items() if k.startswith(KERNEL_ENV_PREFIX)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kcr_kernels.bridge",
        description="Serve a kcr kernel to jupyter_client over ZMQ.",
    )
    parser.add_argument("-f", "--connection-file", required=True, help="Jupyter connection file")
    parser.add_argument(
        "--gateway-url",
        default=os.environ.get("KCR_GATEWAY_URL", ""),
        help="kcr gateway to relay to (default $KCR_GATEWAY_URL; empty: local mode)",
    )
    parser.add_argument("--kernel-id", default=None, help="attach to this gateway kernel")
    parser.add_argument(
        "--kernel-name", default=None, help="gateway kernelspec (default kcr-<language>)"
    )
    parser.add_argument("--language", default="python", help="kernel language (local mode)")
    parser.add_argument("--data-dir", default=None, help="local mode: where the pod lives")
    parser.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        default=os.environ.get("KCR_ALLOW_UNSANDBOXED", "") not in ("", "0", "false"),
        help="local mode: run without bubblewrap when it is unavailable (NOT isolated)",
    )
    parser.add_argument("--start-timeout", type=float, default=30.0)
    parser.add_argument("--reconnect-timeout", type=float, default=60.0)
    parser.add_argument("--log-level", default=os.environ.get("KCR_BRIDGE_LOG_LEVEL", "WARNING"))
    return parser.parse_args(argv)


class Bridge:
    """Wires the ZMQ sockets to a gateway kernel or a local one; see the module docstring."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.exit_code: int | None = None
        self._stopped = asyncio.Event()
        self.kernel = None
        self._own_data_dir: Path | None = None
        info = read_connection_file(args.connection_file)
        self.sockets = KernelSockets(info, self._on_message)

    def exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._stopped.set()

    def _make_kernel(self):
        args = self.args
        env = kernel_env(os.environ)
        if args.gateway_url:
            from .bridge_gateway import GatewayAPI, GatewayKernel

            api = GatewayAPI(args.gateway_url, os.environ.get("KCR_GATEWAY_TOKEN", ""))
            return GatewayKernel(
                self.sockets,
                api,
                kernel_id=args.kernel_id,
                kernel_name=args.kernel_name or f"kcr-{args.language}",
                env=env,
                reconnect_timeout=args.reconnect_timeout,
                on_exit=self.exit,
            )
        from .bridge_local import LocalKernel

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
            on_exit=self.exit,
        )

    def _on_message(self, channel: str, idents: list[bytes], parts: list[bytes]) -> None:
        kernel = self.kernel
        if hasattr(kernel, "handle_raw"):
            kernel.handle_raw(channel, idents, parts)
            return
        unpack = self.sockets.session.unpack
        msg = {
            "header": unpack(parts[0]),
            "parent_header": unpack(parts[1]),
            "metadata": unpack(parts[2]),
            "content": unpack(parts[3]),
            "buffers": parts[4:],
        }
        kernel.handle(channel, idents, msg)

    def _on_sigint(self) -> None:
        if self.kernel is not None:
            asyncio.ensure_future(self.kernel.interrupt())

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


if __name__ == "__main__":
    main()

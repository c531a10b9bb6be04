"""``kcr-runner`` / ``python -m kcr_runner``: start the runner and its worker.

Prints exactly one line to stdout once it is listening and the worker is up (or dead):
``KCR_RUNNER_READY {"host": ..., "port": ..., "pid": ...}``; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .files import Workspace
from .languages import LANGUAGES, get_language
from .memory_cap import MemoryCap
from .server import RunnerState, make_app
from .worker_process import WorkerProcess

MiB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcr-runner", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: the OS picks a free port")
    parser.add_argument("--workspace", required=True, help="the kernel's working directory")
    parser.add_argument("--language", default="python", choices=sorted(LANGUAGES))
    parser.add_argument(
        "--worker-prefix",
        default="[]",
        help="JSON list prepended to the worker command (e.g. a bubblewrap sandbox)",
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=10 * MiB,
        help="output per cell (serialized content of every output event: stream, display, "
        "execute_result, error, ...) before one truncation notice; 0: no limit",
    )
    parser.add_argument(
        "--max-output-messages",
        type=int,
        default=100_000,
        help="output events per cell before one truncation notice; 0: no limit",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=None,
        help="seconds before a running cell is interrupted",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=64 * MiB,
        help="largest WebSocket frame / request body held in memory",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=0,
        help="largest file uploaded into the workspace (streamed to disk; 0: no limit)",
    )
    parser.add_argument(
        "--max-state-bytes",
        type=int,
        default=512 * MiB,
        help="largest state snapshot / restore blob",
    )
    parser.add_argument(
        "--memory-cgroup",
        default="",
        help="the memory cgroup folder the worker runs in: an OOM kill there stops the "
        "kernel with a 'used more than N of memory' message",
    )
    args = parser.parse_args(argv)
    try:
        prefix = json.loads(args.worker_prefix)
    except ValueError as exc:
        parser.error(f"--worker-prefix is not JSON: {exc}")
    if not isinstance(prefix, list) or not all(isinstance(p, str) for p in prefix):
        parser.error("--worker-prefix must be a JSON list of strings")
    args.worker_prefix = prefix
    args.workspace = os.path.abspath(args.workspace)
    os.makedirs(args.workspace, exist_ok=True)
    return args


async def serve(args: argparse.Namespace, token: str) -> None:
    language = get_language(args.language)
    workspace = args.workspace
    env = {k: v for k, v in os.environ.items() if not k.startswith("KCR_RUNNER_")}
    worker = WorkerProcess(
        args.worker_prefix + language.worker_argv(),
        cwd=None if args.worker_prefix else workspace,
        env=env,
        options={
            # The worker's own stream cap is a backstop: the runner's budget counts every
            # output type and at least one byte per character, so it is always reached first.
            "max_output_bytes": args.max_output_bytes or 1 << 62,
            "max_state_bytes": args.max_state_bytes,
        },
        line_limit=max(args.max_state_bytes, args.max_request_bytes) * 4 // 3 + 16 * MiB,
        cell_timeout=args.cell_timeout,
        memory_cap=MemoryCap(args.memory_cgroup or None),
    )
    state = RunnerState(
        token=token,
        language=language,
        worker=worker,
        workspace=Workspace(workspace),
        max_request_bytes=args.max_request_bytes,
        max_state_bytes=args.max_state_bytes,
        max_file_bytes=args.max_file_bytes,
        max_output_bytes=args.max_output_bytes,
        max_output_messages=args.max_output_messages,
        channels=set(),
    )
    worker.on_unsolicited = state.broadcast
    server = HTTPServer(make_app(state), max_body_size=args.max_request_bytes)
    sockets = bind_sockets(args.port, args.host)
    server.add_sockets(sockets)
    await worker.start()
    port = sockets[0].getsockname()[1]
    ready = {"host": args.host, "port": port, "pid": os.getpid()}
    sys.stdout.write(f"KCR_RUNNER_READY {json.dumps(ready)}\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await worker.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), 2)


def hide_from_same_uid() -> None:
    """Make this process non-dumpable, so user code running as the same uid (a Kubernetes pod
    has one uid for runner and worker) cannot read the token from ``/proc/<pid>/environ`` or
    attach a debugger. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    token = os.environ.pop("KCR_RUNNER_TOKEN", None)
    if not token:
        sys.stderr.write("kcr-runner: KCR_RUNNER_TOKEN is not set; refusing to start without it\n")
        raise SystemExit(2)
    hide_from_same_uid()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s kcr-runner %(message)s"
    )
    asyncio.run(serve(args, token))


if __name__ == "__main__":
    main()

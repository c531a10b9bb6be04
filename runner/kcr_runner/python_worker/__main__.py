"""Entry point of the Python worker: ``python -m kcr_runner.python_worker``.

stdin/stdout are the worker-protocol pipes to the runner. This one process is ipykernel's
kernel (:mod:`.kernel`, on the main thread) *and* the relay (:mod:`.relay`, on a thread of its
own) that carries messages between the runner's pipes and the kernel's ZMQ sockets: ``ipc``
files in a fresh 0700 folder of the sandbox's private /tmp, which only this process opens.

One process instead of a relay process with the kernel as its child: one hop less per
message (latency) and about 20 MB less per pod. The worker's death is the kernel's death,
seen by the runner directly (exit status or signal); the relay thread ends the process when
the runner closes the pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import threading


def main() -> None:
    proto_in = os.dup(0)  # os.dup() descriptors are not inherited by executed programs
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # stray output goes to the runner's log, never into the protocol
    # A forked child (multiprocessing) must not hold the protocol pipes: the runner sees the
    # worker's end by their EOF.
    os.register_at_fork(after_in_child=lambda: _close(proto_in, proto_out))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the workspace

    first = b""
    while not first.endswith(b"\n"):
        chunk = os.read(proto_in, 1)
        if not chunk:
            break
        first += chunk
    from ..worker_protocol import decode

    options = decode(first) if first.strip() else {}
    if options.get("type") != "configure":
        print("kcr worker: expected a configure message first", file=sys.stderr)
        raise SystemExit(2)

    # The kernel's sockets and runtime files: private to the sandbox's uid.
    private = tempfile.mkdtemp(prefix="kcr-kernel-")
    connection = {
        "transport": "ipc",
        "ip": os.path.join(private, "k"),
        "shell_port": 1,
        "iopub_port": 2,
        "stdin_port": 3,
        "control_port": 4,
        "hb_port": 5,
        # The sockets are reachable only from inside the sandbox, where user code runs
        # anyway; signing would protect nothing and costs time on every message.
        "key": "",
        "signature_scheme": "hmac-sha256",
        "kernel_name": "kcr-python",
    }
    connection_file = os.path.join(private, "kernel.json")
    with open(connection_file, "w") as f:
        json.dump(connection, f)

    # PYTEST_CURRENT_TEST turns off ipykernel's capture of file descriptors 1 and 2: the
    # kernel is never a test process, even when a test started its runner.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # IPython and Jupyter write profile and runtime files: keep them out of HOME, which a
    # sandbox may set to the workspace (whose files are synced to the file store).
    os.environ.setdefault("IPYTHONDIR", os.path.join(private, "ipython"))
    os.environ.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(private, "runtime"))
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

    from .relay import Relay

    relay = Relay(proto_in, proto_out, connection, None, options)
    thread = threading.Thread(
        target=_serve, args=(relay, float(options.get("ready_timeout", 60))), name="kcr-relay"
    )
    thread.daemon = True
    # Like ipykernel's own threads: not shown to (nor traced by) the debugger.
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    thread.start()

    from .kernel import KCRKernelApp

    KCRKernelApp.launch_instance(
        argv=["-f", connection_file, "--HistoryManager.hist_file=:memory:"],
        kernel_class="kcr_runner.python_worker.kernel.KCRKernel",
    )
    # The kernel's loop stopped (a shutdown_request): the worker is over; the runner
    # reports the exit.
    os._exit(0)


def _serve(relay, ready_timeout: float) -> None:
    try:
        info = relay.wait_ready(ready_timeout)
    except TimeoutError as exc:
        print(f"kcr worker: {exc}", file=sys.stderr)
        relay.stop_kernel_and_exit(3)
    relay.send(
        {
            "type": "ready",
            "language": "python",
            "pid": os.getpid(),
            "kernel_pid": os.getpid(),
            "language_version": info.get("language_info", {}).get("version", ""),
            "kernel_info": info,
        }
    )
    relay.flush_all()
    try:
        relay.serve_forever()
    except BaseException as exc:  # never leave a kernel nobody can reach
        print(f"kcr worker: the relay stopped: {exc!r}", file=sys.stderr)
        os._exit(70)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


if __name__ == "__main__":
    main()

"""Entry point of the Python worker: ``python -m kcr_runner.python_worker``.

stdin/stdout are the worker-protocol pipes to the runner. This process is the *relay*
(:mod:`.relay`): it starts ipykernel's kernel (:mod:`.kernel`) as its child, inside the same
sandbox, with ZMQ ``ipc`` sockets in a fresh 0700 folder of the (private) /tmp, and carries
messages between the runner and the kernel until either goes away.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile


def _die_with_parent() -> None:
    """In the kernel child: SIGKILL when the relay dies (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def main() -> None:
    proto_in = os.dup(0)  # os.dup() descriptors are not inherited by children
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # stray output goes to the runner's log, never into the protocol

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
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # IPython and Jupyter write profile and runtime files: keep them out of HOME, which a
    # sandbox may set to the workspace (whose files are synced to the file store).
    env.setdefault("IPYTHONDIR", os.path.join(private, "ipython"))
    env.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(private, "runtime"))
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    argv = [
        sys.executable,
        "-m",
        "kcr_runner.python_worker.kernel",
        "-f",
        connection_file,
        "--IPKernelApp.parent_handle=" + str(os.getpid()),
        "--HistoryManager.hist_file=:memory:",
    ]
    kernel = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=2,
        stderr=2,
        env=env,
        preexec_fn=_die_with_parent,
    )

    from .relay import Relay

    relay = Relay(proto_in, proto_out, connection, kernel.pid, options)
    try:
        info = relay.wait_ready(float(options.get("ready_timeout", 60)))
    except TimeoutError as exc:
        print(f"kcr worker: {exc}", file=sys.stderr)
        relay.stop_kernel_and_exit(3)
    relay.send(
        {
            "type": "ready",
            "language": "python",
            "pid": os.getpid(),
            "kernel_pid": kernel.pid,
            "language_version": info.get("language_info", {}).get("version", ""),
            "kernel_info": info,
        }
    )
    relay.flush_all()
    relay.serve_forever()


if __name__ == "__main__":
    main()

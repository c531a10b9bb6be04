"""Entry point of the Python worker: ``python -m kcr_runner.python_worker``.

stdin/stdout are the protocol pipes to the runner. They are moved to private descriptors at
once; descriptor 0 becomes /dev/null and descriptors 1 and 2 become pipes captured into
``stream`` events, so ``os.system("echo hi")`` output reaches the client as well.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile


def main() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")  # os.dup() descriptors are not inherited by children
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # until capture starts, stray fd-1 output goes to the runner's log
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # IPython creates a profile directory at startup; keep it out of HOME, which a sandbox may
    # set to the workspace (whose files are synced to the file store).
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="kcr-ipython-"))

    from ..worker_protocol import decode

    first = proto_in.readline()
    options = decode(first) if first else {}
    if options.get("type") != "configure":
        print("kcr worker: expected a configure message first", file=sys.stderr)
        raise SystemExit(2)

    from .channel import ProtocolChannel
    from .output import CaptureStream, FdCapture, OutputRouter
    from .shell import make_shell
    from .worker import PythonWorker

    worker: PythonWorker | None = None

    def on_interrupt(message):
        if worker is not None:
            worker.on_interrupt(message)

    channel = ProtocolChannel(proto_in, proto_out, on_interrupt)
    router = OutputRouter(channel.event, int(options.get("max_output_bytes", 10 * 1024 * 1024)))
    shell = make_shell(lambda event, content: None)  # IPython's startup chatter stays in the log
    worker = PythonWorker(channel, router, shell)
    worker.max_state_bytes = int(options.get("max_state_bytes", 1 << 30))

    worker.captures = [FdCapture(1, "stdout", router), FdCapture(2, "stderr", router)]
    sys.stdout = CaptureStream(router, "stdout")
    sys.stderr = CaptureStream(router, "stderr")
    sys.stdin = open(os.devnull)
    for capture in worker.captures:
        capture.start()
    router.start()
    channel.start()
    channel.send(
        {
            "type": "ready",
            "language": "python",
            "pid": os.getpid(),
            "language_version": platform.python_version(),
        }
    )
    worker.serve_forever()


if __name__ == "__main__":
    main()

"""``python -m kcr_runner.node_worker LANGUAGE``: set up descriptors, then exec Node.js.

Node cannot move its own descriptors, so this launcher does it before ``exec``:
0 = /dev/null, 1/2 = write ends of two capture pipes (so output of the user's child processes
is captured too), 3/4 = the protocol pipes from the runner, 5/6 = the capture pipes' read ends
(read by the worker itself), 7 = the runner's log (the original stderr).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

F_SETPIPE_SZ = 1031


def main() -> None:
    language = sys.argv[1] if len(sys.argv) > 1 else "javascript"
    node = os.environ.get("KCR_NODE") or shutil.which("node") or shutil.which("nodejs")
    if node is None:
        print("kcr worker: Node.js (node) is not installed", file=sys.stderr)
        raise SystemExit(2)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for fd in (out_w, err_w):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)  # room for children's output bursts
        except OSError:
            pass
    devnull = os.open(os.devnull, os.O_RDONLY)
    # Take copies first: the targets overlap the sources.
    plan = {0: devnull, 1: out_w, 2: err_w, 3: 0, 4: 1, 5: out_r, 6: err_r, 7: 2}
    copies = {target: os.dup(source) for target, source in plan.items()}
    for target, copy in copies.items():
        os.dup2(copy, target)  # inheritable
    for fd in {*copies.values(), devnull, out_r, out_w, err_r, err_w} - set(plan):
        os.close(fd)
    script = str(Path(__file__).with_name("worker.js"))
    os.execv(node, [node, "--stack-size=4000", script, language])


if __name__ == "__main__":
    main()

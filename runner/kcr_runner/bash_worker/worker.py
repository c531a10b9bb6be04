"""``BashWorker``: drives one non-interactive bash through its stdin, one line per cell.

Each cell is written to a private file and run as ``__kcr_cell FILE; __kcr_done $?``: the
cell is ``source``d inside a function, so ``cd``, variables and functions stay in the shell.
``__kcr_done`` writes the status to a dedicated pipe (descriptor 3 in bash, closed for the
cell's own commands) and a sync mark to stdout and stderr, so the worker knows the cell is over
and has all of its output, whatever the cell prints.

Interrupt: SIGINT to bash's process group. A running child (``sleep``) dies of it; bash's INT
trap then installs a DEBUG trap that makes every further command of the cell return (bash's
``extdebug`` "return 2" rule), so even a loop of builtins stops and the shell survives with its
state. ``__kcr_done`` removes the DEBUG trap again (it costs time on every command).
A cell that runs ``exit`` ends the shell: the worker reports it and starts a fresh bash.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from typing import Any

from ..python_worker.channel import ProtocolChannel
from ..python_worker.output import OutputRouter
from ..subprocess_worker import PipePump, SubprocessWorker, error_content

_PRELUDE = r"""
shopt -s extdebug expand_aliases
__kcr_int=
__kcr_abort() { [[ -z ${FUNCNAME[1]} || ${FUNCNAME[1]} == __kcr_done ]] || return 2; }
trap '__kcr_int=1; trap __kcr_abort DEBUG' INT
__kcr_cell() { source "$1" 3>&-; }
__kcr_done() {
    local s=$1
    [[ -n $__kcr_int ]] && s=130
    __kcr_int=
    trap - DEBUG
    printf '\000KCR-SYNC\000'; printf '\000KCR-SYNC\000' >&2
    printf '%s\n' "$s" >&3
}
"""


def bash_version() -> str:
    try:
        out = subprocess.run(
            ["bash", "-c", "echo $BASH_VERSION"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


class BashWorker(SubprocessWorker):
    """One bash process (its own process group), restarted only when a cell exits it.

    A cell fails when its last command fails: the error is ``ExitStatus`` with the status.
    Environment variables set through the runner's ``POST /env`` are exported into bash before
    the next cell.
    """

    language = "bash"

    def __init__(self, channel: ProtocolChannel, router: OutputRouter):
        super().__init__(channel, router)
        self.cells = tempfile.mkdtemp(prefix="kcr-bash-")
        self._exported = dict(os.environ)
        self._start_bash()

    def _start_bash(self) -> None:
        status_r, status_w = os.pipe()
        self.bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
        )
        os.close(status_w)
        self.status = os.fdopen(status_r, "rb")
        assert self.bash.stdout is not None and self.bash.stderr is not None
        self.pumps = [
            PipePump(self.bash.stdout, "stdout", self.router),
            PipePump(self.bash.stderr, "stderr", self.router),
        ]
        prelude = _PRELUDE.replace(">&3", f">&{status_w}").replace("3>&-", f"{status_w}>&-")
        self._send(prelude)
        self._exported = dict(os.environ)

    def _send(self, text: str) -> None:
        assert self.bash.stdin is not None
        self.bash.stdin.write(text.encode())
        self.bash.stdin.flush()

    def _env_updates(self) -> str:
        changed = {k: v for k, v in os.environ.items() if self._exported.get(k) != v}
        self._exported = dict(os.environ)
        return "".join(
            f"export {k}={shlex.quote(v)}; " for k, v in changed.items() if k.isidentifier()
        )

    def stop_cell(self) -> None:
        try:
            os.killpg(self.bash.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    def run_cell(self, code: str) -> dict[str, Any] | None:
        path = os.path.join(self.cells, "cell.sh")
        with open(path, "w") as f:
            f.write(code if code.endswith("\n") else code + "\n")
        marks = [pump.marks_seen() for pump in self.pumps]
        try:
            self._send(f"{self._env_updates()}__kcr_cell {shlex.quote(path)}; __kcr_done $?\n")
        except (BrokenPipeError, OSError):
            pass
        line = self.status.readline()
        if not line:
            return self._restart()
        for pump, seen in zip(self.pumps, marks, strict=True):
            pump.wait_marks(seen + 1, 2.0)
        status = int(line.strip() or 0)
        if self.interrupt_reason is not None or status == 0:
            return None
        return error_content("ExitStatus", f"the last command exited with status {status}")

    def _restart(self) -> dict[str, Any]:
        code = self.bash.wait()
        for pump in self.pumps:
            pump.thread.join(1.0)
        self.status.close()
        self._start_bash()
        interrupted = self.interrupt_reason is not None
        self.interrupt_reason = None  # report the exit, not an interrupt
        return error_content(
            "BashExited",
            f"bash exited with status {code}"
            + (" while being interrupted" if interrupted else "")
            + "; a new bash was started (variables and functions were reset)",
        )

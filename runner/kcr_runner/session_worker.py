"""``SessionWorker``: drives one long-lived language process (an R session, a JShell) whose
state persists between cells.

The language process reads one request line per cell on its stdin (the subclass builds it
with ``request_line``; it names a file holding the cell, written here), runs the cell, writes
``SYNC_MARK`` to its stdout and stderr, then one JSON line on a dedicated status pipe (its
descriptor number is in the environment variable ``status_env``):

    {"status": "ok"|"error"|"interrupted", "result": TEXT?, "plots": [PNG paths]?,
     "ename": ..., "evalue": ..., "traceback": [...]}

``result`` becomes the ``execute_result`` (``text/plain``), each plot a ``display_data``
(``image/png``). Interrupt: SIGINT to the process group; the language process turns it into a
stop of the running cell and keeps its state. A process that does not stop within
``KILL_GRACE`` seconds is killed; then, as when a cell ends the process (``quit()``,
``System.exit``), a fresh one is started and the cell's error (``<name>Exited``) says that the
state was reset.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .python_worker.channel import ProtocolChannel
from .python_worker.output import OutputRouter
from .subprocess_worker import PipePump, SubprocessWorker, describe_status, error_content

#: Seconds between the SIGINT of an interrupt and SIGKILL when the process does not stop.
KILL_GRACE = 10.0


class SessionWorker(SubprocessWorker):
    """Base of the workers with one long-lived language process (see the module docstring).

    Subclasses set ``language``, ``session_name`` (``"R"``: used in messages and as the
    ``ename`` prefix), ``status_env``, ``cell_file`` and implement ``command()`` (the argv) and
    ``request_line(cell_path, plot_dir)``.
    """

    session_name = "session"
    status_env = "KCR_STATUS_FD"
    cell_file = "cell.txt"

    def __init__(self, channel: ProtocolChannel, router: OutputRouter):
        super().__init__(channel, router)
        self.cells = tempfile.mkdtemp(prefix=f"kcr-{self.language}-")
        self._lock = threading.Lock()
        self._cell_serial = 0
        self._count = 0
        self._silent = False
        self._start_process()

    # -- for subclasses ---------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def request_line(self, cell_path: str, plot_dir: str) -> str:
        return cell_path

    # -- the process ------------------------------------------------------------------------
    def _start_process(self) -> None:
        status_r, status_w = os.pipe()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            env={**os.environ, self.status_env: str(status_w)},
        )
        os.close(status_w)
        self.status = os.fdopen(status_r, "rb")
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.pumps = [
            PipePump(self.proc.stdout, "stdout", self.router),
            PipePump(self.proc.stderr, "stderr", self.router),
        ]

    def stop_cell(self) -> None:
        with self._lock:
            proc, serial = self.proc, self._cell_serial
        _signal_group(proc.pid, signal.SIGINT)

        def kill_later() -> None:
            with self._lock:
                still = self.executing and self.proc is proc and self._cell_serial == serial
            if still and proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(KILL_GRACE, kill_later)
        timer.daemon = True
        timer.start()

    def op_execute(self, content: dict[str, Any]) -> dict[str, Any]:
        self._silent = bool(content.get("silent", False))
        self._count = self.execution_count
        return super().op_execute(content)

    def run_cell(self, code: str) -> dict[str, Any] | None:
        with self._lock:
            self._cell_serial += 1
        cell = os.path.join(self.cells, self.cell_file)
        with open(cell, "w", encoding="utf-8") as f:
            f.write(code if code.endswith("\n") else code + "\n")
        plots = tempfile.mkdtemp(dir=self.cells, prefix="plots-")
        try:
            marks = [pump.marks_seen() for pump in self.pumps]
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((self.request_line(cell, plots) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            line = self._read_status()
            if line is None:
                return self._restart()
            # the process wrote its marks before the status line: they are in the pipes, so a
            # long wait only matters when this machine is very busy (EOF ends it too)
            for pump, seen in zip(self.pumps, marks, strict=True):
                pump.wait_marks(seen + 1, 30.0)
            result = json.loads(line)
            for path in result.get("plots") or []:
                self._send_png(path)
        finally:
            shutil.rmtree(plots, ignore_errors=True)
        if self.interrupt_reason is not None:
            return None
        if result.get("status") == "interrupted":
            # The process saw an interrupt although none was sent for this cell: a signal for
            # the previous cell delivered late. Say so rather than report a silent success.
            return error_content(
                "KeyboardInterrupt",
                "an interrupt meant for the previous cell arrived late and stopped this one; "
                "run it again",
            )
        if result.get("status") == "error":
            return error_content(
                str(result.get("ename") or "Error"),
                str(result.get("evalue") or ""),
                [str(line) for line in result.get("traceback") or []],
            )
        if result.get("result") is not None and not self._silent:
            self.event(
                "execute_result",
                {
                    "execution_count": self._count,
                    "data": {"text/plain": str(result["result"])},
                    "metadata": {},
                },
            )
        return None

    def _read_status(self) -> bytes | None:
        """The cell's status line; ``None`` once the process exited (a child of it may still
        hold the pipe open, so the pipe's end is not waited for)."""
        fd = self.status.fileno()
        buffer = b""
        while True:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                buffer += chunk
                if buffer.endswith(b"\n"):
                    return buffer
            elif self.proc.poll() is not None:
                return None

    def _send_png(self, path: str) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return
        self.event(
            "display_data",
            {
                "data": {"image/png": base64.b64encode(data).decode(), "text/plain": "<plot>"},
                "metadata": {},
                "transient": {},
            },
        )

    def _restart(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        _signal_group(self.proc.pid, signal.SIGKILL)  # leftover children
        for pump in self.pumps:
            pump.thread.join(1.0)
        self.status.close()
        with self._lock:
            self._start_process()
        interrupted = self.interrupt_reason is not None
        self.interrupt_reason = None  # report the exit, not an interrupt
        return error_content(
            f"{self.session_name}Exited",
            f"{self.session_name} {describe_status(code)}"
            + (" after it did not stop when interrupted" if interrupted else "")
            + f"; a new {self.session_name} session was started (its state was reset)",
        )


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

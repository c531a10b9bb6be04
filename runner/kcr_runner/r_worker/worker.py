"""``RWorker``: drives one long-lived R process (``loop.R``) so variables persist between cells.

Each cell is written to a private file and R is sent one request line on its stdin
(``CELL<TAB>PLOT_DIR<TAB>ENV_FILE``); ``loop.R`` evaluates it in the global environment and
answers with one JSON line on a dedicated status pipe after writing a sync mark to its stdout
and stderr (so all of the cell's output has been routed before the reply). Plots are PNG files
that R writes into the cell's plot folder; they are sent as ``display_data`` (``image/png``).

Interrupt: SIGINT to R's process group. R turns it into an ``interrupt`` condition that stops
the cell and keeps the session (its children, e.g. ``system("sleep 9")``, get the signal too).
R code stuck in compiled code that never checks for interrupts is killed after
``KILL_GRACE`` seconds; then, as after ``quit()`` in a cell, a fresh R is started and the
cell's error says that the variables were reset.
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

from ..python_worker.channel import ProtocolChannel
from ..python_worker.output import OutputRouter
from ..subprocess_worker import PipePump, SubprocessWorker, describe_status, error_content

LOOP = Path(__file__).with_name("loop.R")
#: Seconds between the SIGINT of an interrupt and SIGKILL when R does not stop.
KILL_GRACE = 10.0


class RWorker(SubprocessWorker):
    """One R process (its own process group), restarted only when it exits or is killed.

    A cell's error is R's condition: ``ename`` its class (``simpleError``, ...), ``evalue`` its
    message, the traceback ``Error in call: message`` and the user's call stack; a parse error is
    ``ParseError`` (nothing of the cell runs). Visible values are printed to stdout as the R
    console prints them; warnings go to stderr at once. Environment variables set through the
    runner's ``POST /env`` are set in R (``Sys.setenv``) before the next cell.
    """

    language = "r"

    def __init__(self, channel: ProtocolChannel, router: OutputRouter):
        super().__init__(channel, router)
        self.cells = tempfile.mkdtemp(prefix="kcr-r-")
        self._lock = threading.Lock()
        self._cell_serial = 0
        self._start_r()

    def _start_r(self) -> None:
        status_r, status_w = os.pipe()
        r = shutil.which("R") or "R"
        self.r = subprocess.Popen(
            [r, "--vanilla", "--quiet", "--no-echo", f"--file={LOOP}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            env={**os.environ, "KCR_R_STATUS_FD": str(status_w)},
        )
        os.close(status_w)
        self.status = os.fdopen(status_r, "rb")
        assert self.r.stdout is not None and self.r.stderr is not None
        self.pumps = [
            PipePump(self.r.stdout, "stdout", self.router),
            PipePump(self.r.stderr, "stderr", self.router),
        ]
        self._exported = dict(os.environ)

    def stop_cell(self) -> None:
        with self._lock:
            proc, serial = self.r, self._cell_serial
        _signal_group(proc.pid, signal.SIGINT)

        def kill_later() -> None:
            with self._lock:
                still = self.executing and self.r is proc and self._cell_serial == serial
            if still and proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(KILL_GRACE, kill_later)
        timer.daemon = True
        timer.start()

    def _env_file(self) -> str:
        """An R file setting the variables changed through ``POST /env`` ("" when none)."""
        changed = {k: v for k, v in os.environ.items() if self._exported.get(k) != v}
        self._exported = dict(os.environ)
        if not changed:
            return ""
        path = os.path.join(self.cells, "env.R")
        with open(path, "w", encoding="utf-8") as f:
            for key, value in changed.items():
                # a JSON string literal is a valid R string literal
                f.write(f"Sys.setenv({json.dumps(key)} = {json.dumps(value)})\n")
        return path

    def run_cell(self, code: str) -> dict[str, Any] | None:
        with self._lock:
            self._cell_serial += 1
        cell = os.path.join(self.cells, "cell.R")
        with open(cell, "w", encoding="utf-8") as f:
            f.write(code if code.endswith("\n") else code + "\n")
        plots = tempfile.mkdtemp(dir=self.cells, prefix="plots-")
        try:
            marks = [pump.marks_seen() for pump in self.pumps]
            try:
                assert self.r.stdin is not None
                self.r.stdin.write(f"{cell}\t{plots}\t{self._env_file()}\n".encode())
                self.r.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            line = self._read_status()
            if line is None:
                return self._restart()
            for pump, seen in zip(self.pumps, marks, strict=True):
                pump.wait_marks(seen + 1, 2.0)
            result = json.loads(line)
            for path in result.get("plots", []):
                self._send_png(path)
        finally:
            shutil.rmtree(plots, ignore_errors=True)
        if result.get("status") != "error" or self.interrupt_reason is not None:
            return None
        return error_content(
            str(result.get("ename") or "Error"),
            str(result.get("evalue") or ""),
            [str(line) for line in result.get("traceback") or []],
        )

    def _read_status(self) -> bytes | None:
        """The cell's status line; ``None`` when R exited (a child of R may hold the pipe)."""
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
            elif self.r.poll() is not None:
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
            code = self.r.wait(5)
        except subprocess.TimeoutExpired:
            _signal_group(self.r.pid, signal.SIGKILL)
            code = self.r.wait()
        _signal_group(self.r.pid, signal.SIGKILL)  # R's leftover children
        for pump in self.pumps:
            pump.thread.join(1.0)
        self.status.close()
        with self._lock:
            self._start_r()
        interrupted = self.interrupt_reason is not None
        self.interrupt_reason = None  # report the exit, not an interrupt
        return error_content(
            "RExited",
            f"R {describe_status(code)}"
            + (" after it did not stop when interrupted" if interrupted else "")
            + "; a new R session was started (variables and loaded packages were reset)",
        )


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

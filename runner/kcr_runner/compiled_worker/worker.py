"""``CompiledWorker``: build a cell with the language's compiler, then run it as a program."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from typing import Any

from ..languages import LanguageSpec, ProgramSpec
from ..python_worker.channel import ProtocolChannel
from ..python_worker.output import OutputRouter
from ..subprocess_worker import PipePump, SubprocessWorker, describe_status, error_content

#: Seconds between SIGINT and SIGKILL when a cell's program does not stop.
KILL_GRACE = 2.0


def prepare_source(program: ProgramSpec, code: str) -> tuple[str, str]:
    """``(file name, source text)`` for one cell: wrapped when it is not a whole program."""
    if program.entry_pattern and not re.search(program.entry_pattern, code):
        code = program.wrapper.replace("{code}", code)  # not str.format: sources hold braces
    name = program.source
    if program.stem_pattern:
        found = re.search(program.stem_pattern, code)
        if found:
            name = found.group(1) + os.path.splitext(name)[1]
    return name, code


class CompiledWorker(SubprocessWorker):
    """Runs each cell as a fresh program in its own process group, cwd = the workspace.

    The cell's source and binary live in a private build folder under ``$TMPDIR`` that is
    removed after the cell (the workspace only holds what the program itself writes). A
    compiler failure is the cell's error (``CompileError`` with the compiler's message); a
    program that exits non-zero gives ``ProgramError``. Interrupt/timeout: SIGINT to the
    process group, SIGKILL after ``KILL_GRACE`` seconds.
    """

    def __init__(self, channel: ProtocolChannel, router: OutputRouter, spec: LanguageSpec):
        super().__init__(channel, router)
        assert spec.program is not None
        self.language = spec.name
        self.program = spec.program
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.build_root = tempfile.mkdtemp(prefix=f"kcr-{spec.name}-")
        # programs whose background children still hold the output pipes (kept from GC)
        self._lingering: list[tuple[subprocess.Popen, list[PipePump]]] = []

    def _start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self.interrupt_reason is not None:
                raise InterruptedError
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.program.env},
                **kwargs,
            )
            return self._proc

    def stop_cell(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGINT)

        def kill_later() -> None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(KILL_GRACE, kill_later)
        timer.daemon = True
        timer.start()

    def run_cell(self, code: str) -> dict[str, Any] | None:
        build = tempfile.mkdtemp(dir=self.build_root)
        try:
            return self._build_and_run(code, build)
        except InterruptedError:
            return None  # op_execute reports the interrupt
        finally:
            with self._lock:
                self._proc = None
            shutil.rmtree(build, ignore_errors=True)

    def _build_and_run(self, code: str, build: str) -> dict[str, Any] | None:
        name, source = prepare_source(self.program, code)
        src = os.path.join(build, name)
        with open(src, "w") as f:
            f.write(source)
        values = {
            "src": src,
            "bin": os.path.join(build, "program"),
            "dir": build,
            "stem": os.path.splitext(name)[0],
        }
        if self.program.compile:
            argv = [_fill(arg, values) for arg in self.program.compile]
            proc = self._start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=build)
            try:
                output, _ = proc.communicate(timeout=self.program.compile_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.communicate()
                return error_content(
                    "CompileError",
                    f"the compiler ran longer than {self.program.compile_timeout} s",
                )
            if self.interrupt_reason is not None:
                return None
            if proc.returncode != 0:
                message = output.decode(errors="replace").replace(build + "/", "")
                lines = message.rstrip().splitlines() or [
                    f"{argv[0]} {describe_status(proc.returncode)}"
                ]
                first = next((line for line in lines if "error" in line.lower()), lines[0])
                return {"ename": "CompileError", "evalue": first.strip(), "traceback": lines}
        argv = [_fill(arg, values) for arg in self.program.run]
        proc = self._start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            PipePump(proc.stdout, "stdout", self.router),
            PipePump(proc.stderr, "stderr", self.router),
        ]
        code_ = proc.wait()
        for pump in pumps:
            # a background child may keep the pipe open: stop waiting for it after a moment
            pump.thread.join(0.5 if self.interrupt_reason is None else 0.1)
        self._lingering = [
            (p, ps) for p, ps in self._lingering if any(x.thread.is_alive() for x in ps)
        ]
        if any(pump.thread.is_alive() for pump in pumps):
            self._lingering.append((proc, pumps))
        else:
            proc.stdout.close()
            proc.stderr.close()
        if self.interrupt_reason is not None or code_ == 0:
            return None
        return error_content("ProgramError", f"the program {describe_status(code_)}")


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

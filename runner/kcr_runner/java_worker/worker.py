"""``JavaWorker``: one JVM running ``KcrJShell.java``, a JShell (the JDK's ``jdk.jshell`` API,
local execution engine), so variables, methods, classes and imports persist between cells.

A cell is split into snippets by JShell's own source analysis and evaluated in order; a
rejected snippet is the cell's ``CompileError`` (the compiler's message with the cell's line),
an exception the cell's error (``ename`` the exception's class), and the value of a last
expression is the ``execute_result``. A cell that is a whole program (a public class with
``static void main``) defines the class and runs its ``main``. Interrupt: SIGINT, which the
launcher turns into ``JShell.stop()``: the running snippet stops, the JShell stays.
The launcher runs in the JDK's source-file mode (compiled in memory when the worker starts).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..languages import JVM_OPTIONS
from ..session_worker import SessionWorker

LAUNCHER = Path(__file__).with_name("KcrJShell.java")
_PROGRAM = re.compile(r"public\s+(?:final\s+)?class\s+(\w+)[\s\S]*\bstatic\s+void\s+main\s*\(")


class JavaWorker(SessionWorker):
    """One JShell session, restarted only when it exits (``System.exit``) or is killed."""

    language = "java"
    session_name = "JShell"
    status_env = "KCR_JAVA_STATUS_FD"
    cell_file = "cell.jsh"

    def command(self) -> list[str]:
        java = shutil.which("java") or "java"
        return [java, *JVM_OPTIONS, str(LAUNCHER)]

    def run_cell(self, code: str):
        program = _PROGRAM.search(code)
        if program:  # a whole program, as `java Main.java` would run it
            code = f"{code}\n{program.group(1)}.main(new String[0]);\n"
        return super().run_cell(code)

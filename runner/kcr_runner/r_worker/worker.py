"""``RWorker``: one long-lived R process (``loop.R``) so variables persist between cells.

Each cell is written to a private file and R is sent one request line on its stdin
(``CELL<TAB>PLOT_DIR<TAB>ENV_FILE``); ``loop.R`` evaluates it in the global environment and
answers on the status pipe (``SessionWorker``'s protocol). Plots are PNG files R writes into
the cell's plot folder; they are sent as ``display_data`` (``image/png``).

Interrupt: SIGINT to R's process group. R turns it into an ``interrupt`` condition that stops
the cell and keeps the session (its children, e.g. ``system("sleep 9")``, get the signal too).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..python_worker.channel import ProtocolChannel
from ..python_worker.output import OutputRouter
from ..session_worker import SessionWorker

LOOP = Path(__file__).with_name("loop.R")


class RWorker(SessionWorker):
    """One R session, restarted only when it exits or is killed.

    A cell's error is R's condition: ``ename`` its class (``simpleError``, ...), ``evalue`` its
    message, the traceback ``Error in call: message`` and the user's call stack; a parse error is
    ``ParseError`` (nothing of the cell runs). Visible values are printed to stdout as the R
    console prints them; warnings go to stderr at once. Environment variables set through the
    runner's ``POST /env`` are set in R (``Sys.setenv``) before the next cell. ``quit()`` gives
    ``RExited`` and a fresh session.
    """

    language = "r"
    session_name = "R"
    status_env = "KCR_R_STATUS_FD"
    cell_file = "cell.R"

    def __init__(self, channel: ProtocolChannel, router: OutputRouter):
        self._exported = dict(os.environ)
        super().__init__(channel, router)

    def command(self) -> list[str]:
        self._exported = dict(os.environ)  # a fresh R inherits the current environment
        r = shutil.which("R") or "R"
        return [r, "--vanilla", "--quiet", "--no-echo", f"--file={LOOP}"]

    def request_line(self, cell_path: str, plot_dir: str) -> str:
        return f"{cell_path}\t{plot_dir}\t{self._env_file()}"

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
                name, text = (json.dumps(s, ensure_ascii=False) for s in (key, value))
                f.write(f"Sys.setenv({name} = {text})\n")
        return path

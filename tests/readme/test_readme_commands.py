"""Every command in the README's console blocks runs as written after the README's set-up.

The commands run in bash, in a scratch folder inside this checkout (``test-artifacts/``,
so ``hatch`` finds the project), in an environment without any Python tool: ``PATH`` is
the system's plus the folder ``./bootstrap`` links ``hatch`` and ``uv`` into, and no
virtualenv, hatch or pyenv variable is set. ``./bootstrap`` itself runs for real (into the
scratch folder); the hatch environments are the machine's usual ones (created on first use,
as for a user), so nothing else is re-installed. What is skipped or rewritten, and why:
:mod:`tests.readme.readme_script`. Any non-zero exit fails the test with the script's
output and the servers' logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.readme.readme_script import console_blocks, plan, script

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("curl") is None,
    reason="needs bubblewrap and curl (.ci/run installs them)",
)

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "n = 1",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": "print('sum', sum(range(n)))",
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {
        "kernelspec": {"name": "kcr-python", "display_name": "Python 3 (kcr)", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def clean_environment(scratch: Path) -> dict[str, str]:
    """No Python tool on PATH but what ./bootstrap installs; Jupyter folders in scratch."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HATCH", "PYENV", "VIRTUAL_ENV", "CONDA", "PYTHON", "JUPYTER", "KCR"))
        and k not in ("PATH", "UV_PROJECT_ENVIRONMENT")
    }
    env.update(
        PATH=f"{scratch / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        # Kept between runs (test-artifacts/ is ignored by git): a first run installs uv and
        # hatch from scratch, later ones re-run ./bootstrap over it (the upgrade path).
        KCR_TOOLS_DIR=str(REPO / "test-artifacts" / "readme-tools"),
        KCR_BIN_DIR=str(scratch / "bin"),
        JUPYTER_DATA_DIR=str(scratch / "jupyter-data"),
        JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
        JUPYTER_PATH=str(scratch / "env" / "share" / "jupyter"),  # --sys-prefix's stand-in
    )
    return env


def test_the_plan_runs_every_command_that_needs_no_cluster():
    steps = plan(README)
    assert sum(len(b) for b in console_blocks(README)) == len(steps)
    skipped = {s.line: s.reason for s in steps if s.action == "skip"}
    # Only these kinds of commands are not run (each with its reason).
    assert all(line.startswith(("hatch test", "hatch run bench:", "helm ")) for line in skipped)
    actions = {s.action for s in steps}
    assert {"bootstrap", "gateway", "lab-help", "run"} <= actions
    ran = [s.line for s in steps if s.action == "run"]
    for expected in ("curl -f", "hatch run jupyter execute", "hatch run papermill"):
        assert any(line.startswith(expected) for line in ran), expected


@pytest.mark.timeout(600)
def test_every_readme_command_runs_as_written(tmp_path):
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="readme-", dir=REPO / "test-artifacts"))
    try:
        (scratch / "notebook.ipynb").write_text(json.dumps(NOTEBOOK))
        (scratch / "data.csv").write_text("a,b\n1,2\n")
        steps = plan(README)
        servers = sum(s.action in ("gateway", "lab") for s in steps)
        text = script(steps, repo=REPO, scratch=scratch, ports=free_ports(servers))
        (scratch / "readme.sh").write_text(text)
        done = subprocess.run(
            ["bash", str(scratch / "readme.sh")],
            env=clean_environment(scratch),
            capture_output=True,
            text=True,
            timeout=600,
        )
        (REPO / "test-artifacts" / "readme-last-run.txt").write_text(done.stdout + done.stderr)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(scratch.glob("*.log")))
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
        assert "== README commands: all ran" in done.stdout
        out = json.loads((scratch / "out.ipynb").read_text())  # papermill's, with n = 5
        printed = str([o.get("text") for c in out["cells"] for o in c.get("outputs", [])])
        assert "sum 10" in printed, printed
        assert (scratch / "copy.csv").read_text() == "a,b\n1,2\n"
    finally:
        stop_groups(scratch / "servers.pids")
        shutil.rmtree(scratch, ignore_errors=True)


def stop_groups(pid_file: Path) -> None:
    """SIGTERM (then SIGKILL) the servers' process groups the script left, if any."""
    if not pid_file.exists():
        return
    groups = [int(p) for p in pid_file.read_text().split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(g) for g in groups):
            time.sleep(0.2)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True

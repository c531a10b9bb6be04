"""A kcr kernelspec says where kcr-kernels must be installed: jupyter_client loads the
``kcr-provisioner`` entry point from its own environment, and its message for a missing
one names no package."""

from __future__ import annotations

import json
import subprocess
import sys

from kcr_kernels.cli import REQUIREMENT


def test_user_install_names_the_requirement(jp_environ):
    done = subprocess.run(
        [sys.executable, "-m", "kcr_kernels.cli", "install-kernelspecs", "--user"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "kcr-kernels must be installed in the Python environment that runs jupyter_client" in (
        done.stdout
    )
    assert "pip install 'kcr-kernels[notebooks]'" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(listed.stdout)["kernelspecs"]["kcr-python"]["spec"]
    assert spec["metadata"]["kcr_requires"] == REQUIREMENT

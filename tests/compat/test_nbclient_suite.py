"""nbclient's own tests against kcr-python, as the CI runs them (a time-bounded part).

The whole suite (127 tests, about 10 minutes on 2 cores, see docs/notebooks.md)
runs with ``python tests/compat/nbclient_suite.py``. CI runs the part below
(``-k NBCLIENT_SUBSET``): the tests that failed at start before the bridge took
ipykernel's arguments, the parallel/multiprocessing ones that hung before the
provisioner was fork-safe, and the notebook corpus. A failure not listed in
``nbclient_expected_failures.txt`` fails the test, and so does a listed one
that passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("nbclient_suite.py")

#: pytest -k expression of the part CI runs.
NBCLIENT_SUBSET = "parallel or test_run_all_notebooks or test_startnewkernel_with_kernelmanager"


@pytest.mark.timeout(900)
def test_nbclient_suite_part_on_kcr():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--", "-k", NBCLIENT_SUBSET],
        capture_output=True,
        text=True,
    )
    summary = [line for line in done.stdout.splitlines() if line.startswith(("nbclient ", "  "))]
    print("\n".join(summary))
    assert done.returncode == 0, "\n".join(summary) or done.stderr[-3000:]

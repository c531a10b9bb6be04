"""A gateway-mode ``jupyter execute`` leaves a clean gateway log: no error, traceback,
"never retrieved" task or 4xx/5xx line (such noise hides real problems). The notebook
itself has an error cell (``--allow-errors``): a user's exception is not the gateway's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import NOTEBOOKS, TOKEN

# What must not appear: errors, tracebacks, unretrieved task exceptions, HTTP 4xx/5xx,
# WebSocket ping warnings, Jupyter Server's "No session ID specified".
NOISE = re.compile(
    r"ERROR|Traceback|never retrieved|Exception|^\[[EW] |^(4\d\d|5\d\d) [A-Z]+ "
    r"|ping_timeout|ping timeout|No session ID",
    re.MULTILINE,
)


def noise(log: str) -> list[str]:
    return [line for line in log.splitlines() if NOISE.search(line)]


@pytest.mark.parametrize("mode", ["gateway"])
def test_jupyter_execute_leaves_no_noise_in_the_gateway_log(kcr_spec, tmp_path, gateway):
    start = gateway.log_path.stat().st_size
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "execute",
            "--kernel_name=kcr-python",
            "--allow-errors",
            f"--output={tmp_path / 'out.ipynb'}",
            str(NOTEBOOKS / "sample.ipynb"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "KCR_GATEWAY_TOKEN": TOKEN},
        timeout=100,
    )
    gateway.log.flush()
    with open(gateway.log_path) as f:
        f.seek(start)
        written = f.read()
    assert "shut down" in written  # the run's kernel was started and deleted here
    assert noise(written) == [], written


def test_the_noise_filter_sees_what_it_must():
    assert noise("403 GET /api (127.0.0.1) 0.8ms\n404 DELETE /api/kernels/x (::1) 2ms") != []
    assert noise("Task exception was never retrieved") != []
    assert noise("The websocket_ping_timeout (90000) cannot be longer than ...") != []
    assert noise("[KCRGateway] Kernel 1 started (kcr-python) in 3 ms") == []

"""Fixtures for the provisioner / bridge tests: a real gateway, kernelspecs, pytest-jupyter.

* ``gateway`` (session): a real ``kcr-gateway`` subprocess on 127.0.0.1:0
  with a token and a warm python pool; ``gateway.get(path)`` calls its API.
* ``kcr_spec``: installs the ``kcr-python`` kernelspec with the package's own
  installer into the temporary Jupyter data dir that pytest-jupyter's
  ``jp_environ`` sets up (never into the machine's Jupyter folders), in the
  mode the test is parametrized with (``gateway`` or ``local``), and points
  the environment at the gateway.
* ``run``: runs a coroutine on pytest-jupyter's event loop (the loop
  ``jp_start_kernel`` starts and stops kernels on). Tests here are plain
  functions driving that loop, so pytest-asyncio's loop never mixes in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# pytest-jupyter's fixtures, imported by name (its collection hooks are not
# taken: the rest of the suite runs on pytest-asyncio).
from pytest_jupyter.jupyter_client import jp_start_kernel  # noqa: F401
from pytest_jupyter.jupyter_core import (  # noqa: F401
    echo_kernel_spec,
    jp_asyncio_loop,
    jp_config_dir,
    jp_data_dir,
    jp_env_config_path,
    jp_env_jupyter_path,
    jp_environ,
    jp_home_dir,
    jp_kernel_dir,
    jp_runtime_dir,
    jp_system_config_path,
    jp_system_jupyter_path,
)

from kcr_kernels.cli import install_kernelspecs

TOKEN = "kcr-provisioner-test-token"
NOTEBOOKS = Path(__file__).parent / "notebooks"


def http_json(method: str, url: str, token: str = TOKEN, timeout: float = 10.0):
    request = urllib.request.Request(url, method=method)
    request.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_for(condition, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a pod's data folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


class GatewayProcess:
    """A ``kcr-gateway`` subprocess; ``url`` once it logged that it listens."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.log_path = data_dir / "gateway.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> GatewayProcess:
        cmd = [
            sys.executable,
            "-m",
            "kcr_gateway.app",
            "--ip=127.0.0.1",
            "--port=0",
            f"--data-dir={self.data_dir / 'gw'}",
            f"--KCRGateway.auth_token={TOKEN}",
            '--KCRGateway.pools={"python": {"warm": 2}}',
        ]
        self.log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"kcr-gateway exited:\n{self.log_path.read_text()}")
            m = re.search(r"listening on (http://[\d.:]+)", self.log_path.read_text())
            return m.group(1) if m else None

        self.url = wait_for(listening, 30, what="kcr-gateway to listen")
        # Kernels start from a warm pool: wait until it is full.
        wait_for(lambda: self.pools()["python"]["warm"] >= 2, 30, what="a warm python pool")
        return self

    def get(self, path: str):
        return http_json("GET", self.url + path)

    def pools(self) -> dict:
        return self.get("/api/kcr/pools")

    def kernel_ids(self) -> set[str]:
        return {k["id"] for k in self.get("/api/kernels")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    server = GatewayProcess(tmp_path_factory.mktemp("kcr-gateway")).start()
    yield server
    server.stop()


@pytest.fixture
def run(jp_asyncio_loop):  # noqa: F811 - the fixture imported above
    return jp_asyncio_loop.run_until_complete


@pytest.fixture(params=["gateway", "local"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def kcr_spec(mode, jp_environ, monkeypatch, request):  # noqa: F811
    """Install ``kcr-python`` for ``mode`` into the temporary Jupyter data dir."""
    gateway_url = ""
    if mode == "gateway":
        server = request.getfixturevalue("gateway")
        gateway_url = server.url
        monkeypatch.setenv("KCR_GATEWAY_TOKEN", TOKEN)
    monkeypatch.delenv("KCR_GATEWAY_URL", raising=False)
    install_kernelspecs(user=True, gateway_url=gateway_url)
    return "kcr-python"


def pytest_collection_modifyitems(config, items):
    """Re-run a provisioner test whose kernel lost its port to another process.

    jupyter_client picks the kernel's five ports (free at that moment) and the bridge binds
    them a moment later; under `hatch test`'s two xdist workers another process can take one
    in between ("Address already in use", then jupyter_client's "Kernel died before replying
    to kernel_info"). That race is jupyter_client's, with any kernel; only that failure is
    re-run, any other fails at once.
    """
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(
                pytest.mark.flaky(
                    reruns=2, only_rerun=["Address already in use", "Kernel died before replying"]
                )
            )

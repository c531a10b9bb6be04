"""Real ``kcr-gateway`` and Jupyter Server / JupyterLab processes for the client tests.

Both are started as subprocesses on 127.0.0.1 with their own temporary HOME
and Jupyter folders, log to a file in their work folder (quoted in every
start-up error), and are stopped with SIGTERM (SIGKILL after a grace period).
A :class:`GatewayProcess` can be stopped and started again on the same port,
which is how the tests restart the gateway under a running Jupyter Server.

Equivalent command lines::

    python -m kcr_gateway.app --ip=127.0.0.1 --port=P --data-dir=D --KCRGateway.auth_token=T
    python -m jupyter_server --ip=127.0.0.1 --port=Q --gateway-url=http://127.0.0.1:P \
        --GatewayClient.auth_token=T --IdentityProvider.token=U    # or: python -m jupyterlab
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_json(url: str, token: str = "", timeout: float = 5.0):
    """GET ``url`` (blocking) and decode its JSON body; raises urllib's errors."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class ManagedProcess:
    """A server subprocess with a log file; ``start()`` waits for ``is_ready()``."""

    what = "server"

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.workdir / f"{self.what}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def is_ready(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60.0):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.what} is already running")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.what} exited with code {self.proc.returncode} while starting; "
                    f"log:\n{self.log_text()[-4000:]}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if self.is_ready():
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.what} was not ready within {timeout:g} s; log:\n{self.log_text()[-4000:]}"
        )

    def stop(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class GatewayProcess(ManagedProcess):
    """``kcr-gateway`` with token auth; ready once every pool has its warm pods."""

    what = "kcr-gateway"

    def __init__(self, workdir: Path, token: str, *, port: int | None = None, args=()):
        super().__init__(workdir, port)
        self.token = token
        self.args = list(args)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kcr_gateway.app",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--data-dir={self.workdir / 'data'}",
            f"--KCRGateway.auth_token={self.token}",
            *self.args,
        ]

    def is_ready(self) -> bool:
        pools = http_get_json(f"{self.url}/api/kcr/pools", self.token)
        return all(p.get("warm", 0) >= p.get("target", 0) for p in pools.values())

    def get(self, path: str):
        """GET a JSON document from the gateway itself (blocking)."""
        return http_get_json(self.url + path, self.token)


class JupyterServerProcess(ManagedProcess):
    """A real Jupyter Server (``app="jupyter_server"``) or JupyterLab (``app="jupyterlab"``).

    It uses ``gateway`` for every kernel (``--gateway-url``) and requires
    ``token``; ``env`` is added to its environment (that is how ``KERNEL_*``
    variables reach the gateway: GatewayClient forwards them on kernel start).
    """

    what = "jupyter-server"

    def __init__(
        self,
        workdir: Path,
        gateway: GatewayProcess,
        token: str,
        *,
        app: str = "jupyter_server",
        env: dict[str, str] | None = None,
        args=(),
    ):
        super().__init__(workdir)
        self.gateway = gateway
        self.token = token
        self.app = app
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.root_dir = self.workdir / "notebooks"
        self.root_dir.mkdir(exist_ok=True)

    #: Fail fast in tests when the gateway is gone instead of retrying for minutes.
    DEFAULT_ARGS = (
        "--GatewayClient.gateway_retry_max=2",
        "--GatewayClient.gateway_retry_interval=0.5",
    )

    def command(self) -> list[str]:
        overridden = {a.split("=")[0] for a in self.args}
        return [
            sys.executable,
            "-m",
            self.app,
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--no-browser",
            "--allow-root",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--gateway-url={self.gateway.url}",
            f"--GatewayClient.auth_token={self.gateway.token}",
            f"--IdentityProvider.token={self.token}",
            *[d for d in self.DEFAULT_ARGS if d.split("=")[0] not in overridden],
            *self.args,
        ]

    def environment(self) -> dict[str, str]:
        home = self.workdir / "home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        return env

    def is_ready(self) -> bool:
        return "started" in http_get_json(f"{self.url}/api/status", self.token)

"""Real ``kcr-gateway`` processes for fault tests (and bench/faults_gateway.py).

:class:`GatewayProcess` runs ``python -m kcr_gateway.app`` with the options given, waits
for its ``listening on http://…`` line, and keeps its stderr. It can be killed with any
signal (``SIGKILL`` is a crash: no clean shutdown, runners die with it through their
parent-death signal). Nothing here is a test double.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/")
FAST_LEASES = [
    "--KCRLeaseKeeper.lease_interval=0.2",
    "--KCRCheckpointer.checkpoint_delay=0.05",
]


class GatewayProcess:
    """One gateway process; ``lines`` is its stderr so far."""

    def __init__(self, data_dir, *args: str, port: int = 0, warm: int = 1, env: dict | None = None):
        self.command = [
            sys.executable,
            "-m",
            "kcr_gateway.app",
            f"--port={port}",
            f"--data-dir={data_dir}",
            *args,
        ]
        if not any(a.startswith("--KCRGateway.pools=") for a in args):
            self.command.append(f"--KCRGateway.pools={json.dumps({'python': {'warm': warm}})}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KCR_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> GatewayProcess:
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                time.sleep(0.1)  # the reader thread takes the last lines
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not listen in time: {self.stderr}")
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def run_to_exit(self, timeout: float = 60.0) -> int:
        """Start it expecting it to stop by itself; returns the exit code."""
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        _out, err = self.proc.communicate(timeout=timeout)
        self.lines = err.splitlines()
        return self.proc.returncode

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match and self.port is None:
                self.port = int(match.group(1))
                self._listening.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready in time: {self.stderr}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Clean shutdown (SIGTERM: kernels hibernate)."""
        self.kill(signal.SIGTERM)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGKILL)

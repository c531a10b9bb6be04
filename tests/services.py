"""Start and stop real services for tests: a ``redis-server`` and an S3 API (moto's server mode).

Both bind to 127.0.0.1 on a free port, keep their data in a temporary folder
or in memory, and are stopped by the caller (the session fixtures in
``tests/conftest.py`` do it). Nothing here is a test double: these are the
real servers, only started small.

Command lines (mirror them in CI if needed)::

    redis-server --bind 127.0.0.1 --port PORT --dir TMPDIR --save "" --appendonly no \
        --protected-mode yes --daemonize no --loglevel warning --logfile TMPDIR/redis.log
    python -m moto.server -H 127.0.0.1 -p PORT      # S3 API at http://127.0.0.1:PORT
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

#: credentials and region the moto server accepts (any value works; these are conventional)
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, deadline: float, what: str, proc: subprocess.Popen, log: str = "") -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting{log}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in time{log}")


def redis_binary() -> str | None:
    """Path of ``redis-server`` (``$KCR_REDIS_SERVER`` or the PATH), or None."""
    return os.environ.get("KCR_REDIS_SERVER") or shutil.which("redis-server")


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1, no persistence, data dir in a temp folder.

    ``start()`` waits until it answers PING; ``stop()`` terminates it (SIGTERM,
    then SIGKILL); ``start()`` again restarts it on the same port (empty).
    """

    def __init__(self, binary: str | None = None, port: int | None = None):
        self.binary = binary or redis_binary()
        if not self.binary:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="kcr-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "redis.log"),
        ]  # fmt: skip

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        log = os.path.join(self.dir, "redis.log")
        _wait_for(self._ping, time.monotonic() + timeout, "redis-server", self.proc, f" ({log})")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MotoS3Server:
    """moto's S3-compatible server in a subprocess on 127.0.0.1 (state in its memory).

    A subprocess rather than ``ThreadedMotoServer`` in the test process, so the
    uploaded objects neither share the GIL with the tests nor count towards the
    test process's memory (the file store tests measure it).
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="kcr-moto-", suffix=".log", delete=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=1) as r:
            return r.status == 200

    def start(self, timeout: float = 30.0) -> MotoS3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env
        )
        _wait_for(
            self._ready, time.monotonic() + timeout, "moto server", self.proc, f" ({self.log.name})"
        )
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)

    def client_options(self) -> dict:
        """Keyword arguments for ``open_file_store`` pointing at this server."""
        return {
            "endpoint_url": self.endpoint,
            "region": S3_REGION,
            "access_key_id": S3_ACCESS_KEY_ID,
            "secret_access_key": S3_SECRET_ACCESS_KEY,
        }

    def create_bucket(self, bucket: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        ).create_bucket(Bucket=bucket)

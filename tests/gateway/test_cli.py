"""The kcr-gateway command: start-up problems are one clear line and exit code 1."""

import socket
import subprocess
import sys

import pytest


def run_gateway(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kcr_gateway.app", "--data-dir", str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_port_in_use(tmp_path, busy_port):
    r = run_gateway(tmp_path, f"--port={busy_port}")
    assert r.returncode == 1
    assert f"kcr-gateway: error: port {busy_port} on 127.0.0.1 is already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_backend(tmp_path):
    r = run_gateway(tmp_path, "--port=0", "--backend=nope")
    assert r.returncode == 1
    assert "unknown backend 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_kernel_store(tmp_path):
    r = run_gateway(tmp_path, "--port=0", "--KCRGateway.kernel_store_url=redis://127.0.0.1:1/0")
    assert r.returncode == 1
    assert "the kernel store is unreachable" in r.stderr
    assert "Traceback" not in r.stderr


def test_kubernetes_backend_without_settings(tmp_path):
    r = run_gateway(tmp_path, "--port=0", "--backend=kubernetes")
    assert r.returncode == 1
    assert "KCR_CONFIG_FILE" in r.stderr
    assert "Traceback" not in r.stderr


def test_kernel_ownership_without_identities(tmp_path):
    r = run_gateway(tmp_path, "--port=0", "--kernel-ownership")
    assert r.returncode == 1
    assert "kernel_ownership needs identities" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_token_file(tmp_path):
    r = run_gateway(tmp_path, "--port=0", f"--token-file={tmp_path / 'nope.txt'}")
    assert r.returncode == 1
    assert "cannot read the token file" in r.stderr and "No such file" in r.stderr
    assert "Traceback" not in r.stderr

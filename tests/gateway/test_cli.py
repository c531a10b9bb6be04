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


def test_help_all_lists_the_kernel_options_by_their_class(tmp_path):
    r = run_gateway(tmp_path, "--help-all")
    assert r.returncode == 0, r.stderr
    for option in (
        "--KCRKernelManager.start_timeout",
        "--KCRKernelManager.default_kernel_name",
        "--KCRLeaseKeeper.lease_ttl",
        "--KCRCheckpointer.checkpoint_delay",
        "--KCRCuller.cull_idle_timeout",
        "--KCRCuller.max_hibernation_age",
    ):
        assert option in r.stdout, option


def _components(tmp_path, argv: list[str]):
    from kcr_gateway.app import KCRGateway

    app = KCRGateway()
    app.initialize(["--data-dir", str(tmp_path), "--allow-unsandboxed", *argv])
    app.init_components()
    return app


def test_kernel_manager_options_are_not_overridden_by_the_gateway(tmp_path):
    km = _components(
        tmp_path,
        [
            "--KCRGateway.pod_start_timeout=12",
            "--KCRKernelManager.start_timeout=7",
            "--KCRKernelManager.default_kernel_name=kcr-bash",
        ],
    ).kernel_manager
    assert km.start_timeout == 7
    assert km.default_kernel_name == "kcr-bash"
    km = _components(
        tmp_path, ["--KCRGateway.pod_start_timeout=12", "--KCRGateway.default_kernel_name=kcr-r"]
    ).kernel_manager
    assert km.start_timeout == 12  # the pool's, by default
    assert km.default_kernel_name == "kcr-r"


def test_moved_options_keep_their_old_spelling_and_the_new_one_wins(tmp_path):
    km = _components(
        tmp_path,
        [
            "--KCRKernelManager.cull_idle_timeout=5",
            "--KCRKernelManager.cull_action=shutdown",
            "--KCRKernelManager.lease_ttl=4",
            "--KCRKernelManager.checkpoint_delay=0.5",
            "--KCRKernelManager.owner=replica-a",
            "--KCRKernelManager.cull_interval=9",
            "--KCRCuller.cull_interval=3",
        ],
    ).kernel_manager
    assert km.culler.cull_idle_timeout == 5
    assert km.culler.cull_action == "shutdown"
    assert km.culler.cull_interval == 3
    assert km.leases.lease_ttl == 4
    assert km.owner == "replica-a"
    assert km.checkpointer.checkpoint_delay == 0.5


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


def test_help_shows_the_real_defaults(tmp_path):
    r = run_gateway(tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    blocks = {b.split("=", 1)[0]: b for b in r.stdout.split("\n--")}
    assert "Default: 'INFO'" in blocks["log-level"]
    assert "else 'local'" in blocks["backend"]
    assert "/kcr'" in blocks["data-dir"]
    for name in ("log-level", "backend", "data-dir", "token-file"):
        assert "Default: ''" not in blocks[name], blocks[name]
        assert "Default: 30" not in blocks[name], blocks[name]


@pytest.mark.parametrize(("argv", "level"), [([], 20), (["--log-level=WARN"], 30)])
def test_log_level_default_is_info_and_the_flag_works(tmp_path, argv, level):
    from kcr_gateway.app import KCRGateway

    app = KCRGateway()
    app.initialize(["--data-dir", str(tmp_path), *argv])
    assert app.log_level == level
    assert [h.level for h in app.log.handlers] == [level]  # traitlets filters in the handler

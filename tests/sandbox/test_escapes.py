"""User code in a sandboxed pod cannot escape: network, host files, processes, other kernels."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from tests.sandbox.sandbox_helpers import needs_bwrap, run_in_pod

pytestmark = needs_bwrap


async def run_json(pod, code: str):
    result = await run_in_pod(pod, code)
    assert result["rc"] == 0, result["stderr"]
    return json.loads(result["stdout"])


CONNECT = """
import json, socket
out = {}
for port in %r:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        out[port] = "connected"
    except OSError as e:
        out[port] = type(e).__name__
print(json.dumps(out))
"""


async def test_cannot_reach_gateway_port_or_host_listeners(pod_factory):
    pod = await pod_factory()
    gateway = socket.create_server(("127.0.0.1", 0))  # stands in for the gateway's port
    gateway_port = gateway.getsockname()[1]
    runner_port = int(pod.url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", gateway_port), timeout=2):
            pass  # reachable from the host: the refusal below is the sandbox's doing
        out = await run_json(pod, CONNECT % ([gateway_port, runner_port],))
    finally:
        gateway.close()
    assert out == {
        str(gateway_port): "ConnectionRefusedError",
        str(runner_port): "ConnectionRefusedError",
    }
    # Only a loopback interface exists in the pod's network namespace.
    ifaces = await run_json(pod, "import json, socket; print(json.dumps(socket.if_nameindex()))")
    assert [name for _, name in ifaces] == ["lo"]


async def test_own_loopback_works(pod_factory):
    pod = await pod_factory()
    code = """
import socket
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
a, _ = srv.accept(); c.sendall(b"hi"); print(a.recv(2).decode())
"""
    result = await run_in_pod(pod, code)
    assert result["stdout"].strip() == "hi", result["stderr"]


async def test_cannot_read_host_tmp(pod_factory):
    pod = await pod_factory()
    secret = Path("/tmp") / f"kcr-host-secret-{secrets.token_hex(4)}"
    secret.write_text("top secret")
    try:
        code = f"""
import json, os
try:
    open({str(secret)!r}).read(); r = "read"
except OSError as e:
    r = type(e).__name__
print(json.dumps({{"open": r, "tmp": os.listdir("/tmp")}}))
"""
        out = await run_json(pod, code)
    finally:
        secret.unlink()
    assert out["open"] == "FileNotFoundError"
    # The pod's /tmp is its own: none of the host's /tmp entries are there.
    host_tmp = set(os.listdir("/tmp"))
    assert not host_tmp & set(out["tmp"]), out["tmp"]


async def test_cannot_see_host_processes(pod_factory):
    pod = await pod_factory()
    code = """
import json, os
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        procs[p] = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
print(json.dumps({"me": os.getpid(), "relay": os.getppid(), "procs": procs}))
"""
    out = await run_json(pod, code)
    procs = {int(pid): cmd for pid, cmd in out["procs"].items()}
    # Only the sandbox's own init (bwrap, pid 1), the worker's relay and its kernel (the
    # process running this code) exist.
    assert set(procs) == {1, out["relay"], out["me"]}, procs
    assert procs[1].startswith("bwrap ")
    assert "kcr_runner.python_worker" in procs[out["relay"]]
    assert os.getpid() != out["me"]


WRITE_EVERYWHERE = """
import json, os, sys
targets = ["/x", "/usr/x", "/etc/x", "/etc/passwd", "/opt/kcr/src/x", sys.prefix + "/x",
           sys.base_prefix + "/x", "/root/x", "/dev/x"]
out = {}
for t in targets:
    try:
        with open(t, "w") as f:
            f.write("pwned")
        out[t] = "written"
    except OSError as e:
        out[t] = type(e).__name__
with open("/work/ok.txt", "w") as f:
    f.write("fine")
with open("/tmp/private.txt", "w") as f:
    f.write("fine")
with open("/dev/shm/private.txt", "w") as f:
    f.write("fine")
with open("/dev/null", "w") as f:
    f.write("fine")
print(json.dumps(out))
"""


async def test_cannot_write_outside_workspace(pod_factory, make_backend):
    pod = await pod_factory()
    out = await run_json(pod, WRITE_EVERYWHERE)
    assert "written" not in out.values(), out
    workspace = Path(pod.meta["workspace"])
    assert (workspace / "ok.txt").read_text() == "fine"
    assert not os.path.exists("/tmp/private.txt")  # noqa: ASYNC240


async def test_cannot_see_another_kernels_files_home_or_gateway_data(pod_factory):
    pod_a = await pod_factory()
    pod_b = await pod_factory()
    ws_a = Path(pod_a.meta["workspace"])
    await run_json(pod_a, "open('/work/a-secret.txt','w').write('A'); print('{}')")
    assert (ws_a / "a-secret.txt").read_text() == "A"
    gateway_root = ws_a.parents[2]  # LocalBackend.root_dir: the gateway's data
    code = f"""
import json, os
out = {{}}
for p in [{str(ws_a)!r}, {str(ws_a / "a-secret.txt")!r}, {str(gateway_root)!r}, "/home",
          os.path.expanduser("~root"), "/root/.bashrc", "/work/main", "/var"]:
    out[p] = os.path.exists(p)
hits = []
for top in ["/work", "/tmp", "/opt", "/root", "/etc"]:
    for d, _, files in os.walk(top):
        hits += [os.path.join(d, f) for f in files if f == "a-secret.txt"]
out["hits"] = hits
out["work"] = os.listdir("/work")
print(json.dumps(out))
"""
    out = await run_json(pod_b, code)
    assert out.pop("hits") == [] and "a-secret.txt" not in out.pop("work")
    assert not any(out.values()), out


async def test_runner_token_not_in_user_environment(pod_factory):
    pod = await pod_factory()
    out = await run_json(pod, "import json, os; print(json.dumps(dict(os.environ)))")
    assert pod.token not in json.dumps(out)
    assert "KCR_RUNNER_TOKEN" not in out
    assert out["HOME"] == "/work"


async def test_unprivileged_identity(pod_factory):
    pod = await pod_factory()
    code = """
import json, os
caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "caps": caps}))
"""
    out = await run_json(pod, code)
    assert out == {"uid": 1000, "gid": 1000, "cwd": "/work", "caps": "0000000000000000"}

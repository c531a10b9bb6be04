"""The code-interpreter API over real HTTP against a real gateway with sandboxed pods."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.code_api.conftest import (
    KEY_A,
    KEY_B,
    KEY_FEW,
    KEY_SLOW,
    call,
    code_api_gateway,
    execute,
    keys_file,
    multipart,
)
from tests.gateway.conftest import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

ID = re.compile(r"^[A-Za-z0-9_-]{21}$")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("code-api")
    app = await code_api_gateway(
        tmp,
        pools={"python": {"warm": 3}, "bash": {"warm": 1}},
        code_api={"max_output_bytes": 10_000, "max_upload_bytes": 200_000},
        manager={"checkpoint_delay": 0.05},
        code_api_keys=[KEY_A],
        code_api_keys_file=keys_file(tmp),
        auth_token="jupyter-secret",
    )
    yield app
    await app.stop_async()


@pytest.fixture
def base(gw) -> str:
    return f"http://127.0.0.1:{gw.port}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(gw) -> str:
    """One session of KEY_A that several tests use (each new session takes a pod)."""
    r = await execute(f"http://127.0.0.1:{gw.port}", "print('ready')")
    return r["session_id"]


async def test_health_needs_no_key(base):
    r = await call(base, "GET", "/v1/health", key=None)
    assert r.code == 200
    assert r.json()["status"] == "healthy"
    assert {"py", "bash"} <= set(r.json()["languages"])


async def test_keys_are_required_and_independent_of_the_jupyter_token(base):
    for key, headers in [
        (None, {}),
        ("wrong", {}),
        (None, {"Authorization": "token jupyter-secret"}),
    ]:
        r = await call(
            base, "POST", "/v1/exec", {"lang": "py", "code": "1"}, key=key, headers=headers
        )
        assert r.code == 401, r.body
        assert r.json()["error"] == "unauthorized" and "x-api-key" in r.json()["message"]
    # The Jupyter API does not take a code-API key.
    r = await call(base, "GET", "/api/kernels", key=KEY_A)
    assert r.code == 403


async def test_state_and_files_persist_in_a_session(base):
    first = await execute(base, "x = 41\nopen('/mnt/data/a.txt', 'w').write('A')\nprint('hi')")
    assert ID.match(first["session_id"])
    assert first["stdout"] == "hi\n" and first["stderr"] == ""
    assert first["has_state"] is True
    assert [(f["name"], f["path"]) for f in first["files"]] == [("a.txt", "/mnt/data/a.txt")]
    assert ID.match(first["files"][0]["id"])
    sid = first["session_id"]
    second = await execute(base, "print(x + 1, open('a.txt').read())", session_id=sid)
    # the size of the session's last checkpoint, once one was saved after the first call
    state_size = second.pop("state_size", 1)
    assert isinstance(state_size, int) and state_size > 0
    assert second == {
        "session_id": sid,
        "stdout": "42 A\n",
        "stderr": "",
        "files": [],
        "has_state": True,
    }


async def test_errors_and_args(base, shared):
    code = "import sys\nprint(sys.argv[1:])\n1/0"
    r = await execute(base, code, args=["one", "two words"], session_id=shared)
    assert r["stdout"] == "['one', 'two words']\n"
    assert "ZeroDivisionError" in r["stderr"] and "\x1b[" not in r["stderr"]


async def test_upload_then_read_by_code(base):
    body, headers = multipart([("file", "data.csv", b"a,b\n1,2\n")])
    r = await call(base, "POST", "/v1/upload", body, headers=headers)
    assert r.code == 200, r.body
    up = r.json()
    assert up["message"] == "success" and ID.match(up["session_id"])
    [entry] = up["files"]
    assert entry["filename"] == "data.csv" and ID.match(entry["fileId"])
    # In the upload's own session ...
    r = await execute(
        base, "print(open('/mnt/data/data.csv').read().split())", session_id=up["session_id"]
    )
    assert r["stdout"] == "['a,b', '1,2']\n" and r["files"] == []
    # Without session_id, files of one session name that session (as LibreChat's tool does).
    ref = {"id": entry["fileId"], "session_id": up["session_id"], "name": "input.csv"}
    r = await execute(base, "print(open('input.csv').read().count(','))", files=[ref])
    assert r["stdout"] == "2\n" and r["session_id"] == up["session_id"]
    assert [f["name"] for f in r["files"]] == ["input.csv"]
    # Files of two sessions: copied into a new one.
    body, headers = multipart([("file", "other.txt", b"o")])
    other = (await call(base, "POST", "/v1/upload", body, headers=headers)).json()
    refs = [ref, {"id": other["files"][0]["fileId"], "session_id": other["session_id"]}]
    r = await execute(
        base, "print(open('input.csv').read()[:3], open('other.txt').read())", files=refs
    )
    assert r["stdout"] == "a,b o\n"
    assert r["session_id"] not in (up["session_id"], other["session_id"])


async def test_written_files_are_listed_and_downloaded_byte_identical(base):
    payload = os.urandom(50_000)
    body, headers = multipart([("files", "seed.bin", payload)])
    up = (await call(base, "POST", "/v1/upload", body, headers=headers)).json()
    sid = up["session_id"]
    code = (
        "import shutil, os\nos.makedirs('out', exist_ok=True)\n"
        "shutil.copy('seed.bin', 'out/données é.bin')\nprint('ok')"
    )
    r = await execute(base, code, session_id=sid)
    [made] = r["files"]
    assert made["name"] == "out/données é.bin" and made["path"] == "/mnt/data/out/données é.bin"
    listing = (await call(base, "GET", f"/v1/files/{sid}")).json()
    assert {f["name"] for f in listing} == {"seed.bin", "out/données é.bin"}
    full = next(f for f in listing if f["id"] == made["id"])
    assert full["size"] == len(payload) and full["session_id"] == sid
    simple = (await call(base, "GET", f"/v1/files/{sid}?detail=simple")).json()
    assert {"id": made["id"], "name": made["name"], "path": made["path"]} in simple
    summary = (await call(base, "GET", f"/v1/files/{sid}?detail=summary")).json()
    assert f"{sid}/{made['id']}" in [s["name"] for s in summary]
    d = await call(base, "GET", f"/v1/download/{sid}/{made['id']}")
    assert d.code == 200 and d.body == payload
    assert d.headers["Content-Type"] == "application/octet-stream"
    assert f"filename*=UTF-8''{quote('données é.bin', safe='')}" in d.headers["Content-Disposition"]
    # Delete: gone from the list, the download and the working folder.
    r = await call(base, "DELETE", f"/v1/files/{sid}/{made['id']}")
    assert r.code == 200 and r.json()["message"] == "success"
    assert made["id"] not in [f["id"] for f in (await call(base, "GET", f"/v1/files/{sid}")).json()]
    assert (await call(base, "GET", f"/v1/download/{sid}/{made['id']}")).code == 404
    r = await execute(base, "import os; print(os.path.exists('out/données é.bin'))", session_id=sid)
    assert r["stdout"] == "False\n"


async def test_a_matplotlib_figure_comes_back_as_a_png_file(base, shared):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    r = await execute(base, code, session_id=shared)
    pngs = [f for f in r["files"] if f["name"].endswith(".png")]
    assert len(pngs) == 1, r
    d = await call(base, "GET", f"/v1/download/{r['session_id']}/{pngs[0]['id']}")
    assert d.code == 200 and d.body.startswith(b"\x89PNG\r\n\x1a\n")
    assert d.headers["Content-Type"] == "image/png"
    # savefig to /mnt/data: listed as a file the call wrote.
    r = await execute(base, "plt.savefig('/mnt/data/fig.png')", session_id=r["session_id"])
    assert [f["name"] for f in r["files"]] == ["fig.png"]


async def test_another_key_sees_none_of_the_session(base, shared):
    r = await execute(base, "open('secret.txt', 'w').write('s')", session_id=shared)
    sid, fid = r["session_id"], r["files"][0]["id"]
    checks = [
        ("POST", "/v1/exec", {"lang": "py", "code": "print(1)", "session_id": sid}),
        ("GET", f"/v1/files/{sid}", None),
        ("GET", f"/v1/download/{sid}/{fid}", None),
        ("DELETE", f"/v1/files/{sid}/{fid}", None),
        (
            "POST",
            "/v1/exec",
            {"lang": "py", "code": "1", "files": [{"id": fid, "session_id": sid}]},
        ),
    ]
    for method, path, body in checks:
        r = await call(base, method, path, body, key=KEY_B)
        assert r.code == 404, (path, r.body)
        assert r.json()["error"] == "not_found"
    body, headers = multipart([("file", "x.txt", b"x")], {"session_id": sid})
    assert (await call(base, "POST", "/v1/upload", body, key=KEY_B, headers=headers)).code == 404
    # Its owner still has it all.
    assert (await call(base, "GET", f"/v1/download/{sid}/{fid}")).body == b"s"


async def test_rate_limit_answers_429_with_retry_after(base):
    codes = []
    for _ in range(3):
        r = await call(base, "GET", "/v1/files/" + "x" * 21, key=KEY_SLOW)
        codes.append(r.code)
    assert codes[:2] == [404, 404]
    assert codes[2] == 429
    assert r.json()["error"] == "rate_limited"
    assert 1 <= r.json()["retry_after_seconds"] <= 60
    assert r.headers["Retry-After"] == str(r.json()["retry_after_seconds"])


async def test_live_session_limit(base):
    await execute(base, "print(1)", key=KEY_FEW)
    r = await call(base, "POST", "/v1/exec", {"lang": "py", "code": "print(2)"}, key=KEY_FEW)
    assert r.code == 429 and r.json()["error"] == "session_limit", r.body


async def test_per_call_limits(gw, base, shared):
    r = await execute(base, "print('x' * 25_000)", session_id=shared)
    assert len(r["stdout"]) < 11_000
    assert "stdout truncated" in r["stdout"] and "limit 10000 bytes" in r["stdout"]
    sessions = gw.code_api.api.sessions
    limits, sessions.limits = sessions.limits, dataclasses.replace(sessions.limits, timeout=1.5)
    try:
        started = time.monotonic()
        code = "import time\nprint('before', flush=True)\ntime.sleep(120)"
        r = await execute(base, code, session_id=shared)
    finally:
        sessions.limits = limits
    assert time.monotonic() - started < 30
    assert r["stdout"] == "before\n" and "longer than its limit of 1.5 s" in r["stderr"]
    assert r["error"] == "timeout"
    r = await execute(base, "print('still usable')", session_id=r["session_id"])
    assert r["stdout"] == "still usable\n"


async def test_the_session_keeps_files_across_languages(base):
    r = await execute(base, "open('n.txt', 'w').write('7')")
    sid = r["session_id"]
    r = await execute(
        base,
        'echo "$(cat /mnt/data/n.txt) $1"; echo 5 > m.txt',
        lang="bash",
        session_id=sid,
        args=["arg"],
    )
    assert r["stdout"] == "7 arg\n" and [f["name"] for f in r["files"]] == ["m.txt"]
    r = await execute(base, "print(open('m.txt').read().strip())", session_id=sid)
    assert r["stdout"] == "5\n"


async def test_a_session_resumes_after_hibernation(gw, base, shared):
    r = await execute(base, "kept = [1, 2, 3]\nopen('h.txt', 'w').write('h')", session_id=shared)
    sid = r["session_id"]
    kernel = gw.kernel_manager.get_kernel(_kernel_id(sid))
    await wait_for(lambda: not kernel.dirty, 30, "checkpoint")
    hibernated, _ = await gw.code_api.api.sessions.sweep(now=time.time() + 3600)
    assert kernel.kernel_id in hibernated
    assert kernel.execution_state == "hibernated"
    r = await execute(base, "print(sum(kept), open('h.txt').read())", session_id=sid)
    assert r["stdout"] == "6 h\n"


async def test_a_session_resumes_after_its_pod_was_killed(gw, base, shared):
    r = await execute(base, "kept = 'alive'", session_id=shared)
    sid = r["session_id"]
    kernel = gw.kernel_manager.get_kernel(_kernel_id(sid))
    await wait_for(
        lambda: not kernel.dirty and not kernel.checkpoint_lock.locked(), 30, "checkpoint"
    )
    await asyncio.sleep(0.2)
    process = kernel.pod.meta["process"]
    os.killpg(os.getpgid(process.pid), signal.SIGKILL)
    await wait_for(lambda: not kernel.attached, 30, "pod loss noticed")
    r = await execute(base, "print(kept)", session_id=sid)
    assert r["stdout"] == "alive\n"
    assert "moved to a new pod" in r["stderr"]


BAD = [
    ("unknown lang", {"lang": "cobol", "code": "x"}, 400, "lang"),
    ("missing code", {"lang": "py"}, 400, "code"),
    ("code not a string", {"lang": "py", "code": 5}, 400, "code"),
    ("session never existed", {"lang": "py", "code": "1", "session_id": "A" * 21}, 404, "session"),
    (
        "malformed session id",
        {"lang": "py", "code": "1", "session_id": "../../etc"},
        400,
        "session_id",
    ),
    ("args not strings", {"lang": "py", "code": "1", "args": [1]}, 400, "args"),
    ("files not a list", {"lang": "py", "code": "1", "files": "a"}, 400, "files"),
    (
        "file name escapes",
        {
            "lang": "py",
            "code": "1",
            "files": [{"id": "A" * 21, "session_id": "B" * 21, "name": "../x"}],
        },
        400,
        "..",
    ),
    (
        "file id escapes",
        {"lang": "py", "code": "1", "files": [{"id": "../../x", "session_id": "B" * 21}]},
        400,
        "id",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
async def test_bad_exec_requests_are_4xx_json(base, case):
    _, body, status, word = case
    r = await call(base, "POST", "/v1/exec", body)
    assert r.code == status, r.body
    assert word in r.json()["message"]


async def test_other_bad_input(base, shared):
    live = await execute(base, "y = 'unharmed'", session_id=shared)
    r = await call(base, "POST", "/v1/exec", b"not json")
    assert r.code == 400 and "not JSON" in r.json()["message"]
    r = await call(base, "POST", "/v1/exec", b"[1, 2]")
    assert r.code == 400 and "JSON object" in r.json()["message"]
    r = await call(base, "POST", "/v1/exec", {"lang": "py", "code": "#" * (10 << 20)})
    assert r.code == 413 and r.json()["error"] == "too_large"
    sid = live["session_id"]
    for path in (f"/v1/download/{sid}/..%2F..%2Fetc%2Fpasswd", f"/v1/download/{sid}/{'Z' * 21}"):
        r = await call(base, "GET", path)
        assert r.code in (400, 404) and r.json()["error"] in ("bad_request", "not_found"), r.body
    body, headers = multipart([("file", "big.bin", b"0" * 300_000)])
    r = await call(base, "POST", "/v1/upload", body, headers=headers)
    assert r.code == 413 and "limit" in r.json()["message"]
    boundary_header = {"Content-Type": "multipart/form-data; boundary=xyz"}
    r = await call(base, "POST", "/v1/upload", b"--xyz\r\ngarbage", headers=boundary_header)
    assert r.code == 400 and "multipart" in r.json()["message"]
    r = await call(base, "POST", "/v1/upload", b"{}", headers={"Content-Type": "application/json"})
    assert r.code == 400 and "multipart" in r.json()["message"]
    r = await call(base, "GET", "/v1/nothing-here")
    assert r.code == 404 and r.json()["error"] == "not_found"
    r = await execute(base, "print(y)", session_id=sid)
    assert r["stdout"] == "unharmed\n"


async def test_expired_sessions_are_deleted(gw, base):
    """Last in the module: the sweep deletes every session idle for ``session_ttl``."""
    body, headers = multipart([("file", "e.txt", b"e")])
    sid = (await call(base, "POST", "/v1/upload", body, headers=headers)).json()["session_id"]
    _, deleted = await gw.code_api.api.sessions.sweep(now=time.time() + 10 * 24 * 3600)
    assert _kernel_id(sid) in deleted
    assert (await call(base, "GET", f"/v1/files/{sid}")).code == 404


def _kernel_id(session_id: str) -> str:
    from kcr_gateway.code_api.ids import kernel_id_of

    return kernel_id_of(session_id)

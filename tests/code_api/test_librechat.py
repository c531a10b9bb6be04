"""LibreChat's own client: the code execution tool of ``@librechat/agents`` (npm), driven by
``librechat/run_tool.cjs`` with ``LIBRECHAT_CODE_BASEURL`` pointing at a real gateway.

The npm package is installed into ``tests/code_api/librechat/node_modules`` (git-ignored)
on first use; only a machine without ``npm`` skips this test (``.ci/run`` installs Node).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from tests.code_api.conftest import KEY_A, call, code_api_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT = Path(__file__).parent / "librechat"


def install_client() -> None:
    if (CLIENT / "node_modules" / "@librechat" / "agents" / "package.json").exists():
        return
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed (apt-get install nodejs npm): LibreChat's client")
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"npm install of @librechat/agents failed:\n{result.stderr}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory):
    await asyncio.to_thread(install_client)
    app = await code_api_gateway(tmp_path_factory.mktemp("librechat"), code_api_keys=[KEY_A])
    yield app
    await app.stop_async()


async def test_librechat_code_tool_runs_code_gets_files_and_reuses_its_session(gw):
    base = f"http://127.0.0.1:{gw.port}"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(CLIENT),
        "LIBRECHAT_CODE_BASEURL": f"{base}/v1",
        "KCR_CODE_API_KEY": KEY_A,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "run_tool.cjs",
        cwd=CLIENT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    first, second = result["calls"]
    assert "stdout:\n42" in first["content"]
    session_id = first["artifact"]["session_id"]
    [answer] = first["artifact"]["files"]
    assert answer["name"] == "answer.txt"
    # The second call ran in the same session: x was still there.
    assert "stdout:\n43 42" in second["content"]
    assert second["artifact"]["session_id"] == session_id
    # The file the tool reported downloads through the API LibreChat's backend calls.
    r = await call(base, "GET", f"/v1/download/{session_id}/{answer['id']}")
    assert r.code == 200 and r.body == b"42"
    # A wrong key: the tool reports LibreChat's authorization message.
    assert "not authorized" in result["failure"]

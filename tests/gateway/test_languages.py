"""Other languages end to end: gateway → sandboxed pod → language worker, over the WebSocket."""

import base64
import shutil

import pytest
import pytest_asyncio

from tests.gateway.conftest import WSKernelClient, http, start_gateway, start_kernel

pytestmark = pytest.mark.asyncio(loop_scope="module")

CASES = {
    # language: (toolchain, first cell, second cell, output of the second cell)
    "javascript": ("node", "let greeting = 'hi from js'", "console.log(greeting)", "hi from js\n"),
    "bash": (
        "bash",
        "GREETING='hi from bash'; cd /tmp",
        'echo "$GREETING $PWD"',
        "hi from bash /tmp\n",
    ),
    "c": (
        "gcc",
        '#include <stdio.h>\nint main(void) { FILE *f = fopen("n.txt", "w"); '
        'fputs("7", f); fclose(f); return 0; }',
        '#include <stdio.h>\nint main(void) { int n; FILE *f = fopen("n.txt", "r"); '
        'fscanf(f, "%d", &n); printf("%d\\n", n * 6); return 0; }',
        "42\n",
    ),
}
CASES["typescript"] = (
    "tsc",
    "let total: number = 40",
    "total += 2; console.log(total)",
    "42\n",
)
CASES["r"] = ("R", "x <- 41; inc <- function(v) v + 1", "cat(inc(x), '\\n')", "42 \n")
AVAILABLE = {lang: case for lang, case in CASES.items() if shutil.which(case[0])}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def polyglot(tmp_path_factory):
    if not AVAILABLE:
        pytest.skip("none of node, bash, gcc, tsc, R is installed (.ci/install-languages.sh)")
    app = await start_gateway(
        tmp_path_factory.mktemp("polyglot"),
        pools={lang: {"warm": 1} for lang in AVAILABLE},
    )
    yield app
    await app.stop_async()


@pytest.mark.parametrize("language", sorted(CASES))
async def test_language_runs_sandboxed_through_the_gateway(polyglot, language):
    if language not in AVAILABLE:
        pytest.skip(f"{CASES[language][0]} is not installed (.ci/install-languages.sh)")
    _, first, second, expected = CASES[language]
    base = f"http://127.0.0.1:{polyglot.port}"
    specs = (await http(base, "GET", "/api/kernelspecs")).json()["kernelspecs"]
    assert f"kcr-{language}" in specs
    kernel_id = await start_kernel(base, name=f"kcr-{language}")
    client = await WSKernelClient.connect(base, kernel_id)
    try:
        info = await client.request("kernel_info_request", {})
        assert info.content["language_info"]["name"].lower() == language
        r = await client.execute(first)
        assert r.content["status"] == "ok", r.content
        r = await client.execute(second)
        assert r.content["status"] == "ok", r.content
        assert r.stdout == expected
        bad = await client.execute("this is not valid code ((")
        assert bad.content["status"] == "error"
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")


async def _kernel(polyglot, language: str):
    if language not in AVAILABLE:
        pytest.skip(f"{CASES[language][0]} is not installed (.ci/install-languages.sh)")
    base = f"http://127.0.0.1:{polyglot.port}"
    kernel_id = await start_kernel(base, name=f"kcr-{language}")
    return base, kernel_id, await WSKernelClient.connect(base, kernel_id)


async def test_typescript_type_error_is_the_cells_error_in_a_sandboxed_pod(polyglot):
    base, kernel_id, client = await _kernel(polyglot, "typescript")
    try:
        r = await client.execute("let count: number = 1")
        assert r.content["status"] == "ok", r.content
        r = await client.execute('console.log("ran"); count = "many"')
        assert r.content["status"] == "error" and r.content["ename"] == "TSError"
        assert "TS2322" in r.content["evalue"] and r.stdout == ""
        errors = r.outputs("error")
        assert [e["ename"] for e in errors] == ["TSError"]
        r = await client.execute("console.log(count + 1)")
        assert r.content["status"] == "ok" and r.stdout == "2\n"
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")


async def test_r_keeps_state_and_sends_plots_from_a_sandboxed_pod(polyglot):
    base, kernel_id, client = await _kernel(polyglot, "r")
    try:
        r = await client.execute("values <- c(3, 1, 2)\nplot(values)")
        assert r.content["status"] == "ok", r.content
        pngs = [d["data"]["image/png"] for d in r.outputs("display_data")]
        assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG")
        r = await client.execute("sort(values)")
        assert r.content["status"] == "ok" and r.stdout == "[1] 1 2 3\n"
        r = await client.execute("stop('no more')")
        assert r.content["ename"] == "simpleError" and r.content["evalue"] == "no more"
    finally:
        client.close()
        await http(base, "DELETE", f"/api/kernels/{kernel_id}")

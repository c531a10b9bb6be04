"""Hello world through ``/v1/exec`` in every language this machine has the toolchain of, and
variables kept between calls for the languages with one long-lived process."""

from __future__ import annotations

import shutil

import pytest
import pytest_asyncio

from tests.code_api.conftest import KEY_A, code_api_gateway, execute

pytestmark = pytest.mark.asyncio(loop_scope="module")

# lang code: (kcr language, toolchain binary, hello-world code)
HELLO = {
    "js": ("javascript", "node", "console.log('hello from js')"),
    "ts": ("typescript", "tsc", "const who: string = 'ts'; console.log(`hello from ${who}`)"),
    "bash": ("bash", "bash", "echo 'hello from bash'"),
    "r": ("r", "R", "cat('hello from r\\n')"),
    "java": ("java", "javac", 'System.out.println("hello from java");'),
    "go": ("go", "go", 'fmt.Println("hello from go")'),
    "rs": ("rust", "rustc", 'println!("hello from rs");'),
    "c": ("c", "gcc", 'printf("hello from c\\n");'),
    "cpp": ("cpp", "g++", 'cout << "hello from cpp" << endl;'),
    "php": ("php", "php", 'echo "hello from php\\n";'),
    "f90": ("fortran", "gfortran", "print '(a)', 'hello from f90'"),
    "d": ("d", "ldc2", 'writeln("hello from d");'),
}
# lang code: (first call, second call, its stdout)
STATE = {
    "js": ("let n = 41", "console.log(n + 1)", "42\n"),
    "ts": ("let n: number = 41", "console.log(n + 1)", "42\n"),
    "bash": ("n=41", "echo $((n + 1))", "42\n"),
    "r": ("n <- 41", "cat(n + 1, '\\n')", "42 \n"),
    "java": ("int n = 41;", "System.out.println(n + 1);", "42\n"),
}
AVAILABLE = {code: case for code, case in HELLO.items() if shutil.which(case[1])}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def polyglot(tmp_path_factory):
    if not AVAILABLE:
        pytest.skip("no language toolchain besides Python (.ci/install-languages.sh)")
    app = await code_api_gateway(
        tmp_path_factory.mktemp("code-api-languages"),
        # No warm pods: each language's first call cold-starts one (keeps the set-up small).
        pools={"python": {"warm": 1}, **{c[0]: {"warm": 0} for c in AVAILABLE.values()}},
        code_api_keys=[KEY_A],
    )
    yield f"http://127.0.0.1:{app.port}"
    await app.stop_async()


@pytest.mark.parametrize("lang", sorted(HELLO))
async def test_hello_world(polyglot, lang):
    if lang not in AVAILABLE:
        pytest.skip(f"{HELLO[lang][1]} is not installed (.ci/install-languages.sh)")
    r = await execute(polyglot, HELLO[lang][2], lang=lang)
    assert r["stdout"] == f"hello from {lang}\n", r
    if lang in STATE:
        first, second, expected = STATE[lang]
        await execute(polyglot, first, lang=lang, session_id=r["session_id"])
        again = await execute(polyglot, second, lang=lang, session_id=r["session_id"])
        assert again["stdout"] == expected, again
        assert again["has_state"] is True
    else:
        assert "has_state" not in r


async def test_args_reach_javascript(polyglot):
    if "js" not in AVAILABLE:
        pytest.skip("node is not installed")
    r = await execute(
        polyglot, "console.log(process.argv.slice(2).join('|'))", lang="js", args=["a", "b c"]
    )
    assert r["stdout"] == "a|b c\n"


async def test_python_hello_world(polyglot):
    r = await execute(polyglot, "print('hello from py')")
    assert r["stdout"] == "hello from py\n" and r["has_state"] is True

"""TypeScript through a real runner: each cell is type-checked against the earlier cells'
declarations; a type error is the cell's error and the cell does not run."""

from __future__ import annotations

import pytest

from tests.languages.conftest import missing_toolchain
from tests.runner.conftest import RunnerProcess, stream_text

pytestmark = pytest.mark.skipif(
    bool(missing_toolchain("typescript")), reason=str(missing_toolchain("typescript"))
)


@pytest.fixture(scope="module")
def ts_runner(tmp_path_factory):
    runner = RunnerProcess(
        tmp_path_factory.mktemp("ts"), "--language", "typescript", "--cell-timeout", "60"
    )
    yield runner
    runner.stop()


@pytest.fixture
async def ts(ts_runner):
    channel = await ts_runner.channel()
    yield channel
    await channel.close()


async def ok(channel, code: str) -> list[dict]:
    events, reply = await channel.execute(code, timeout=60)
    assert reply["content"]["status"] == "ok", reply["content"]
    return events


async def type_error(channel, code: str) -> dict:
    events, reply = await channel.execute(code, timeout=60)
    content = reply["content"]
    assert content["status"] == "error", content
    assert content["ename"] == "TSError", content
    errors = [e["content"] for e in events if e["event"] == "error"]
    assert errors == [{k: content[k] for k in ("ename", "evalue", "traceback")}]
    return content


async def test_a_type_error_against_an_earlier_cell_is_the_cells_error_and_it_does_not_run(ts):
    await ok(ts, "let count: number = 1")
    error = await type_error(ts, 'console.log("ran"); count = "many"')
    assert "TS2322" in error["evalue"] and "'string' is not assignable" in error["evalue"]
    assert error["evalue"].startswith("cell.ts(1,"), error  # the line in the cell
    events = await ok(ts, "console.log(count)")
    assert stream_text(events) == "1\n"  # the failed cell did not run: no "ran", count unchanged


async def test_the_line_and_column_of_the_error_are_the_cells(ts):
    error = await type_error(ts, 'const fine = 1\nconst s: string = fine\nconsole.log("x")')
    assert error["evalue"].startswith("cell.ts(2,7): error TS2322"), error
    assert "not assignable to type 'string'" in error["evalue"]


async def test_functions_interfaces_and_inferred_types_carry_over(ts):
    point = "interface Point { x: number; y: number }\n"
    await ok(ts, point + "function norm(p: Point) { return Math.hypot(p.x, p.y) }")
    error = await type_error(ts, 'norm({ x: 1, y: "2" })')
    assert "TS2322" in error["evalue"]
    await ok(ts, "var total = norm({ x: 3, y: 4 })")  # inferred: number
    error = await type_error(ts, "total.toUpperCase()")
    assert "TS2339" in error["evalue"] and "'number'" in error["evalue"]
    events, reply = await ts.execute("total + 1", timeout=60)
    assert reply["content"]["status"] == "ok"
    results = [e["content"]["data"]["text/plain"] for e in events if e["event"] == "execute_result"]
    assert results == ["6"]


async def test_a_cell_may_redefine_a_var_or_function_with_a_new_type(ts):
    await ok(ts, "var label: number = 1\nfunction shout(s: string) { return s.length }")
    await ok(ts, 'var label: string = "one"\nfunction shout(s: string) { return s.toUpperCase() }')
    events = await ok(ts, "console.log(shout(label).toLowerCase())")
    assert stream_text(events) == "one\n"


async def test_top_level_await_and_imports_type_check(ts):
    events = await ok(ts, "var answer = await Promise.resolve(41)\nconsole.log(answer + 1)")
    assert stream_text(events) == "42\n"
    error = await type_error(ts, "answer.push(1)")
    assert "TS2339" in error["evalue"]
    events = await ok(ts, 'import * as path from "path"\nconsole.log(path.basename("/a/b.txt"))')
    assert stream_text(events) == "b.txt\n"
    events = await ok(ts, 'console.log(path.extname("c.md"))')  # the import carried over
    assert stream_text(events) == ".md\n"


async def test_a_syntax_error_is_still_a_TSError(ts):
    error = await type_error(ts, "let broken: number = ;")
    assert "TS1109" in error["evalue"]
    events = await ok(ts, 'console.log("still fine")')
    assert stream_text(events) == "still fine\n"

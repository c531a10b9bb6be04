"""R through a real runner: one long-lived R session (variables persist, also across an
interrupt), R's errors and warnings, plots as PNG display data, ``quit()`` and ``POST /env``."""

from __future__ import annotations

import base64
import json

import pytest

from tests.languages.conftest import failed, missing_toolchain, ok
from tests.runner.conftest import RunnerProcess, stream_text

pytestmark = pytest.mark.skipif(bool(missing_toolchain("r")), reason=str(missing_toolchain("r")))

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def r_runner(tmp_path_factory):
    runner = RunnerProcess(tmp_path_factory.mktemp("r"), "--language", "r", "--cell-timeout", "60")
    yield runner
    runner.stop()


@pytest.fixture
async def r(r_runner):
    channel = await r_runner.channel()
    yield channel
    await channel.close()


async def test_variables_functions_and_packages_persist(r):
    await ok(r, "x <- 41\nsquare <- function(v) v * v\nlibrary(stats)")
    events = await ok(r, "x <- x + 1\ncat(x, square(3), '\\n')")
    assert stream_text(events) == "42 9 \n"
    events = await ok(r, "x\nsummary(c(1, 2, 3))[['Mean']]")  # visible values print
    assert stream_text(events) == "[1] 42\n[1] 2\n"


async def test_an_error_stops_the_cell_with_rs_message_and_the_users_call_stack(r):
    code = 'inner <- function(v) stop("bad value ", v)\nouter <- function(v) inner(v)\n'
    code += 'cat("before\\n")\nouter(7)\ncat("after\\n")'
    events, error = await failed(r, code)
    assert error["ename"] == "simpleError" and error["evalue"] == "bad value 7"
    assert error["traceback"] == [
        "Error in inner(v): bad value 7",
        "Traceback:",
        "1: outer(7)",
        "2: inner(v)",
    ]
    assert stream_text(events) == "before\n"  # nothing after the failing expression ran
    events = await ok(r, "cat(exists('outer'), '\\n')")  # what ran before the error is kept
    assert stream_text(events) == "TRUE \n"


async def test_a_parse_error_runs_nothing_of_the_cell(r):
    await ok(r, "y <- 1")
    events, error = await failed(r, "y <- 2\nz <- (")
    assert error["ename"] == "ParseError" and "unexpected end of input" in error["evalue"]
    assert stream_text(events) == ""
    events = await ok(r, "cat(y, '\\n')")
    assert stream_text(events) == "1 \n"


async def test_warnings_go_to_stderr_at_once(r):
    events = await ok(
        r, 'w <- as.integer("x")\nf <- function() warning("inside")\nf()\ncat("next\\n")'
    )
    assert stream_text(events, "stderr") == (
        "Warning message:\nNAs introduced by coercion\nWarning message:\nIn f() : inside\n"
    )
    assert stream_text(events) == "next\n"


async def test_each_plot_is_a_png_display(r):
    events = await ok(r, "plot(1:10)\nhist(c(1, 2, 2, 3))\ncat('drawn\\n')")
    pngs = [e["content"]["data"]["image/png"] for e in events if e["event"] == "display_data"]
    assert len(pngs) == 2
    assert all(base64.b64decode(p).startswith(PNG_MAGIC) for p in pngs)
    assert stream_text(events) == "drawn\n"
    events = await ok(r, "1 + 1")  # the device was closed with the cell: no stale plot
    assert not [e for e in events if e["event"] == "display_data"]


async def test_an_interrupt_stops_the_cell_and_keeps_the_session(r, r_runner):
    await ok(r, "kept <- 'still here'")
    request = await r.send("execute", {"code": 'cat("spinning\\n"); repeat {}'})
    await r.wait_for(
        lambda f: f.get("id") == request and "spinning" in f.get("content", {}).get("text", ""),
        60,
    )
    assert (await r_runner.http("POST", "/interrupt")).code == 204
    reply = await r.reply(request, 30)
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    events = await ok(r, "cat(kept, '\\n')")
    assert stream_text(events) == "still here \n"


async def test_environment_variables_from_the_runner_reach_r(r, r_runner):
    response = await r_runner.http("POST", "/env", json.dumps({"KCR_TEST_GREETING": 'hi "R"'}))
    assert response.code == 204
    events = await ok(r, "cat(Sys.getenv('KCR_TEST_GREETING'), '\\n')")
    assert stream_text(events) == 'hi "R" \n'


async def test_quit_starts_a_fresh_session_and_says_so(r):
    await ok(r, "gone <- 1")
    _, error = await failed(r, "quit(status = 3)")
    assert error["ename"] == "RExited"
    assert "status 3" in error["evalue"] and "reset" in error["evalue"]
    events = await ok(r, "cat(exists('gone'), '\\n')")
    assert stream_text(events) == "FALSE \n"

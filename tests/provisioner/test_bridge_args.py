"""The bridge kernel takes the arguments Jupyter clients give python kernels.

nbclient adds ``--HistoryManager.hist_file=:memory:`` to a kernelspec named
``python3``; other clients pass ``--Foo.bar=...``, ``--matplotlib=inline`` or
ipykernel's spellings of the connection file. None of them may stop the
kernel; the ones kcr does not already honour are named once on stderr.
"""

from __future__ import annotations

import pytest
from conftest import TOKEN  # noqa: F401 - the conftest's fixtures are used by name

from kcr_kernels.bridge.args import parse_args


def test_parse_args_keeps_ours_and_ignores_ipykernels():
    args = parse_args(
        [
            "-f",
            "/tmp/conn.json",
            "--language",
            "python",
            "--HistoryManager.hist_file=:memory:",
            "--Foo.bar=1",
            "--matplotlib=inline",
            "--pylab",
            "--kernel",  # never taken for an abbreviation of --kernel-id / --kernel-name
        ]
    )
    assert args.connection_file == "/tmp/conn.json"
    assert args.kernel_id is None and args.kernel_name is None
    assert args.ignored == [
        "--HistoryManager.hist_file=:memory:",
        "--Foo.bar=1",
        "--matplotlib=inline",
        "--pylab",
        "--kernel",
    ]


def test_connection_file_in_ipykernel_spellings():
    assert parse_args(["--f=/tmp/a.json"]).connection_file == "/tmp/a.json"
    assert parse_args(["--IPKernelApp.connection_file=/b.json"]).connection_file == "/b.json"
    assert parse_args(["--connection-file", "/c.json"]).connection_file == "/c.json"


def test_memory_limit_default_and_a_bad_value(monkeypatch, capsys):
    monkeypatch.delenv("KCR_MEMORY_LIMIT", raising=False)
    assert parse_args(["-f", "/a.json"]).memory_limit == "2Gi"
    assert parse_args(["-f", "/a.json", "--memory-limit", "512Mi"]).memory_limit == "512Mi"
    with pytest.raises(SystemExit):
        parse_args(["-f", "/a.json", "--memory-limit", "lots"])
    assert "--memory-limit: bad memory size 'lots'" in capsys.readouterr().err


def test_kernel_starts_with_ipykernel_arguments(kcr_spec, jp_start_kernel, run, capfd):
    extra = ["--HistoryManager.hist_file=:memory:", "--Foo.bar=1", "--matplotlib=inline"]
    _km, kc = run(jp_start_kernel(kcr_spec, extra_arguments=extra))
    reply = run(kc.execute_interactive("6 * 7", timeout=30))
    assert reply["content"]["status"] == "ok"
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if "ignoring kernel arguments" in line]
    assert notes == [
        "[kcr] ignoring kernel arguments kcr kernels do not take: --Foo.bar=1 --matplotlib=inline"
    ]


@pytest.mark.parametrize("mode", ["local"])
def test_ipykernel_cell_name_reaches_the_kernel(kcr_spec, jp_start_kernel, run, monkeypatch):
    # nbclient sets it so that a cell's file name (what tracebacks show) is the same on
    # every run; ipykernel's compiler reads it for every cell.
    monkeypatch.setenv("IPYKERNEL_CELL_NAME", "<IPY-INPUT>")
    _km, kc = run(jp_start_kernel(kcr_spec))
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    code = "import sys\nprint(sys._getframe().f_code.co_filename)"
    reply = run(kc.execute_interactive(code, timeout=30, output_hook=hook))
    assert reply["content"]["status"] == "ok"
    assert "".join(out).strip() == "<IPY-INPUT>"

"""Batch runs on kcr-python: the kernelspec installer, nbclient, papermill, jupyter execute.

The notebook ``notebooks/sample.ipynb`` has a papermill parameters cell,
stream output on stdout and stderr, rich display (HTML, Markdown), an empty
cell, an error cell tagged ``raises-exception``, and cells after the error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import papermill
import pytest
from conftest import NOTEBOOKS, TOKEN
from nbclient import NotebookClient
from papermill.exceptions import PapermillExecutionError

SAMPLE = NOTEBOOKS / "sample.ipynb"


def outputs_of(nb, index: int) -> list[dict]:
    return nb.cells[index].outputs


def text_plain(nb, index: int) -> str:
    results = [o for o in outputs_of(nb, index) if o.output_type == "execute_result"]
    assert results, f"cell {index} has no result: {outputs_of(nb, index)}"
    return results[0].data["text/plain"]


def check_sample_outputs(nb, *, n: int, greeting: str, env_value: str) -> None:
    streams = [o for o in outputs_of(nb, 2) if o.output_type == "stream"]
    stdout = "".join(o.text for o in streams if o.name == "stdout")
    assert stdout == "".join(f"{greeting} {i}\n" for i in range(n))
    assert "".join(o.text for o in streams if o.name == "stderr") == "to stderr\n"

    displays = [o for o in outputs_of(nb, 3) if o.output_type == "display_data"]
    assert displays[0].data["text/html"] == "<b>bold</b>"
    assert displays[1].data["text/markdown"] == "*kcr*"

    assert outputs_of(nb, 4) == []  # the empty cell
    assert text_plain(nb, 5) == str(sum(range(n)))
    errors = [o for o in outputs_of(nb, 6) if o.output_type == "error"]
    assert errors[0].ename == "ZeroDivisionError"
    assert text_plain(nb, 7) == repr(env_value)
    assert text_plain(nb, 8) == repr(("after the error", sum(range(n)) * 10))
    assert nb.metadata.language_info.name == "python"


def test_install_kernelspecs_command(jp_environ, tmp_path):
    """``kcr-kernels install-kernelspecs`` and ``jupyter kernelspec list`` see the spec."""
    prefix = tmp_path / "prefix"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kcr_kernels.cli",
            "install-kernelspecs",
            "--prefix",
            str(prefix),
            "--gateway-url",
            "http://gw.example:8888/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Installed kernelspec kcr-python (gateway http://gw.example:8888/)" in done.stdout
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "kcr-python"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner == {
        "provisioner_name": "kcr-provisioner",
        "config": {"gateway_url": "http://gw.example:8888"},
    }
    assert (spec_dir / "logo-64x64.png").is_file()

    subprocess.run(
        [sys.executable, "-m", "kcr_kernels.cli", "install-kernelspecs", "--user"],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    specs = json.loads(listed.stdout)["kernelspecs"]
    assert specs["kcr-python"]["spec"]["display_name"] == "Python 3 (kcr)"
    assert "kernel_provisioner" in specs["kcr-python"]["spec"]["metadata"]

    bad = subprocess.run(
        [sys.executable, "-m", "kcr_kernels.cli", "install-kernelspecs", "--name", "kcr-cobol"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "no packaged kernelspec kcr-cobol (available: " in bad.stderr
    assert "kcr-python" in bad.stderr.split("available: ")[1]


def test_nbclient_runs_the_notebook(kcr_spec, run, monkeypatch, tmp_path):
    monkeypatch.setenv("KERNEL_NOTEBOOK_RUN", "nbclient")
    nb = nbformat.read(SAMPLE, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kcr_spec,
        allow_errors=True,
        timeout=60,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    run(client.async_execute())
    check_sample_outputs(nb, n=3, greeting="hello", env_value="nbclient")
    # nbclient skips the empty cell; the others ran in order, the error did not stop the run
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == [1, 2, 3, None, 4, 5, 6, 7]


@pytest.mark.parametrize("mode", ["gateway"])
def test_papermill_injects_parameters(kcr_spec, monkeypatch, tmp_path):
    monkeypatch.setenv("KERNEL_NOTEBOOK_RUN", "papermill")
    out = tmp_path / "out.ipynb"
    # papermill reports any error output after the run, even in a cell tagged
    # raises-exception; the run itself goes on and the output notebook is complete.
    with pytest.raises(PapermillExecutionError, match="ZeroDivisionError"):
        papermill.execute_notebook(
            str(SAMPLE),
            str(out),
            parameters={"n": 5, "greeting": "bonjour"},
            kernel_name=kcr_spec,
            cwd=str(tmp_path),
            progress_bar=False,
        )
    nb = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    injected = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    assert len(injected) == 1 and "parameters" in tags[injected[0] - 1]
    assert 'greeting = "bonjour"' in nb.cells[injected[0]].source
    # drop what papermill added (the injected cell, its error banners) and compare
    nb.cells = [
        c
        for c, t in zip(nb.cells, tags, strict=True)
        if "injected-parameters" not in t and "papermill-error-cell-tag" not in t
    ]
    check_sample_outputs(nb, n=5, greeting="bonjour", env_value="papermill")


@pytest.mark.parametrize("mode", ["gateway"])
def test_jupyter_execute_command(kcr_spec, monkeypatch, tmp_path, gateway):
    monkeypatch.setenv("KERNEL_NOTEBOOK_RUN", "jupyter-execute")
    out = tmp_path / "executed.ipynb"
    before = gateway.kernel_ids()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "execute",
            "--kernel_name=kcr-python",
            "--allow-errors",
            f"--output={out}",
            str(SAMPLE),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "KCR_GATEWAY_TOKEN": TOKEN},
        timeout=100,
    )
    nb = nbformat.read(out, as_version=4)
    check_sample_outputs(nb, n=3, greeting="hello", env_value="jupyter-execute")
    assert gateway.kernel_ids() <= before, "jupyter execute left its kernel on the gateway"

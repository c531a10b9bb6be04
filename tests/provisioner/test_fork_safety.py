"""Notebooks run from ``multiprocessing`` workers, forked or spawned, after the parent ran one.

nbclient keeps one event loop per thread, so a worker forked after the parent
ran a notebook inherits that loop, its default executor and whatever the
provisioner left behind; anything the provisioner waits on there that needs a
thread of the parent hangs forever (nbclient's own
``test_many_parallel_notebooks``). Each notebook here must finish within its
timeout in forked and in spawned workers, in both modes.
"""

from __future__ import annotations

import multiprocessing
import queue
import time

import nbformat
import pytest
from conftest import NOTEBOOKS
from nbclient import NotebookClient

NOTEBOOK = NOTEBOOKS / "sample.ipynb"


def run_notebook(kernel_name: str) -> str:
    """Execute the sample notebook; returns cell 5's result."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=60, allow_errors=True).execute()
    results = [o for o in nb.cells[5].outputs if o.output_type == "execute_result"]
    return results[0].data["text/plain"]


def run_notebooks(kernel_name: str, count: int, results) -> None:
    """A worker process's job (top level: spawn pickles it); errors are results too."""
    for _ in range(count):
        try:
            results.put(run_notebook(kernel_name))
        except Exception as e:
            results.put(f"{type(e).__name__}: {e}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_notebooks_in_worker_processes(kcr_spec, start_method):
    expected = run_notebook(kcr_spec)  # the parent runs one first, as nbclient's test does
    ctx = multiprocessing.get_context(start_method)
    results = ctx.Queue()
    workers = [ctx.Process(target=run_notebooks, args=(kcr_spec, 2, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 90
    got = []
    try:
        while len(got) < 4:
            try:
                got.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(
                    f"{4 - len(got)} of 4 notebooks in {start_method}ed workers "
                    "did not finish in 90 s"
                )
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():  # a hung worker ignores SIGTERM
                worker.kill()
                worker.join()
    assert got == [expected] * 4

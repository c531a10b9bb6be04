"""Wall time of ``jupyter execute`` on 20 cells: kcr-python (gateway, warm pool) vs python3.

Usage::

    python bench/notebook_bench.py [--rounds 3]

Starts a ``kcr-gateway`` on 127.0.0.1 with a warm python pool, installs the
``kcr-python`` kernelspec (gateway mode) into a temporary Jupyter data dir,
writes a 20-cell notebook, then alternates ``jupyter execute`` runs of it on
``kcr-python`` and on the stock ``python3`` ipykernel (same machine, same
run) and prints the median and every wall time for each. Each run is a fresh
``jupyter execute`` process: interpreter start, kernel start, 20 cells,
shutdown — what a batch user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

TOKEN = "kcr-bench-token"


def write_notebook(path: Path) -> None:
    cells = ["import math, json, statistics\nvalues = list(range(1000))"]
    for i in range(1, 19):
        cells.append(f"x{i} = sum(v * {i} for v in values)\nprint('cell {i}', x{i})")
    cells.append("from IPython.display import HTML\nHTML('<b>%d</b>' % x18)")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    assert len(nb.cells) == 20
    nbformat.write(nb, path)


def start_gateway(data_dir: Path) -> tuple[subprocess.Popen, str, object]:
    log_path = data_dir / "gateway.log"
    log = open(log_path, "w")  # closed by the caller
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kcr_gateway.app",
            "--ip=127.0.0.1",
            "--port=0",
            f"--data-dir={data_dir / 'gw'}",
            f"--KCRGateway.auth_token={TOKEN}",
            '--KCRGateway.pools={"python": {"warm": 2}}',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://[\d.:]+)", log_path.read_text())
        if m:
            return proc, m.group(1), log
        if proc.poll() is not None:
            raise SystemExit(f"kcr-gateway exited:\n{log_path.read_text()}")
        time.sleep(0.1)
    raise SystemExit("kcr-gateway did not start in 60 s")


def wait_warm(url: str, warm: int = 2) -> None:
    request = urllib.request.Request(url + "/api/kcr/pools")
    request.add_header("Authorization", f"token {TOKEN}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=5) as response:
            if json.loads(response.read())["python"]["warm"] >= warm:
                return
        time.sleep(0.1)
    raise SystemExit("the python pool did not fill in 60 s")


def execute(kernel: str, notebook: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "jupyter", "execute", f"--kernel_name={kernel}", str(notebook)],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kcr-nb-bench-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
            "KCR_GATEWAY_TOKEN": TOKEN,
        }
        notebook = root / "bench20.ipynb"
        write_notebook(notebook)
        gateway, url, log = start_gateway(root)
        try:
            wait_warm(url)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kcr_kernels.cli",
                    "install-kernelspecs",
                    "--user",
                    f"--gateway-url={url}",
                ],
                check=True,
                capture_output=True,
                env=env,
            )
            times: dict[str, list[float]] = {"kcr-python": [], "python3": []}
            execute("python3", notebook, env)  # warm the page cache once for both
            for _ in range(args.rounds):
                for kernel in times:
                    wait_warm(url)
                    times[kernel].append(execute(kernel, notebook, env))
        finally:
            gateway.terminate()
            gateway.wait(30)
            log.close()
    print(f"jupyter execute, 20-cell notebook, {args.rounds} rounds (wall seconds)")
    for kernel, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {kernel:<11} median {statistics.median(values):.2f}  runs: {runs}")


if __name__ == "__main__":
    main()

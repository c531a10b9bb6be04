"""Run nbclient's own test suite against kcr: a kernelspec named ``python3`` on kcr-provisioner.

nbclient's tests start kernels named ``python3`` (and read results the way
ipykernel produces them), so they are a broad check that kcr-python behaves
like ipykernel for a real Jupyter client. This script:

1. downloads the sdist of the nbclient version installed here
   (``pip download --no-binary :all: --no-deps nbclient==X``, through ``uvx pip``
   when this Python has no pip) into a temporary folder; nbclient's code is
   never committed here;
2. installs a kernelspec ``python3`` that runs kcr's bridge through
   ``kcr-provisioner`` (local mode, or ``--gateway-url``) into a temporary
   ``JUPYTER_PATH`` / ``JUPYTER_DATA_DIR`` (the machine's kernelspecs are not
   touched, and no ipykernel ``python3`` can be picked instead);
3. runs nbclient's tests with pytest (``--junitxml``) and compares the failures
   with ``nbclient_expected_failures.txt`` (test id, then ``#`` and why).

Exit status: 0 when the failures are exactly the expected ones, 1 when a test
failed unexpectedly (or an expected failure passed: the list must be
updated), 2 when the suite could not run. ``--stock`` runs the suite on
ipykernel's own ``python3`` instead (the baseline).

Usage::

    python tests/compat/nbclient_suite.py [--gateway-url URL] [--stock] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "nbclient_expected_failures.txt"
REPO = HERE.parents[1]


def expected_failures(path: Path = EXPECTED) -> tuple[dict[str, str], dict[str, str]]:
    """(failing test id → reason, deselected test id → reason) from the expected-failures list.

    A line ``ID  # why`` is a test expected to fail; ``ID [deselect]  # why`` is one that is
    not run, because its failure cannot be pinned on it (its threads fail after it returned
    and pytest reports that on whichever test runs next)."""
    failing, deselected = {}, {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, _, why = line.partition("#")
        test = test.strip()
        if test.endswith("[deselect]"):
            deselected[test[: -len("[deselect]")].strip()] = why.strip()
        else:
            failing[test] = why.strip()
    return failing, deselected


def download_sdist(version: str, dest: Path) -> Path:
    """nbclient's sdist, unpacked under ``dest``; returns its folder."""
    args = ["download", "--no-binary", ":all:", "--no-deps", f"nbclient=={version}"]
    args += ["-d", str(dest)]
    try:
        import pip  # noqa: F401

        cmd = [sys.executable, "-m", "pip", *args]
    except ImportError:
        cmd = ["uvx", "pip", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    (archive,) = dest.glob("nbclient-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / f"nbclient-{version}"


def install_python3_spec(data_dir: Path, gateway_url: str) -> Path:
    """``python3`` = kcr-python (argv, provisioner stanza), installed under ``data_dir``."""
    sys.path.insert(0, str(REPO))
    from kcr_kernels.cli import packaged_specs, prepared_spec

    target = data_dir / "kernels" / "python3"
    target.parent.mkdir(parents=True, exist_ok=True)
    prepared_spec(packaged_specs()["kcr-python"], target, gateway_url, False)
    spec = json.loads((target / "kernel.json").read_text())
    spec["display_name"] = "Python 3 (kcr-python under the name python3)"
    (target / "kernel.json").write_text(json.dumps(spec, indent=2))
    return target


def junit_results(path: Path) -> tuple[dict[str, str], int]:
    """(test id → 'failed'|'error', number of tests) from pytest's junit XML."""
    outcomes = {}
    total = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        total += 1
        module = case.get("classname", "").replace(".", "/")
        parts = module.split("/")
        # classname is tests.test_client[.Class]; the file is the part starting with test_
        index = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        test_id = (
            "/".join(parts[: index + 1])
            + ".py::"
            + "::".join([*parts[index + 1 :], case.get("name", "")])
        )
        if case.find("failure") is not None:
            outcomes[test_id] = "failed"
        elif case.find("error") is not None:
            outcomes[test_id] = "error"
        elif case.find("skipped") is not None:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes, len(outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-url", default="", help="run kernels on this kcr gateway")
    parser.add_argument("--stock", action="store_true", help="baseline: ipykernel's python3")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    version = importlib.metadata.version("nbclient")
    tmp = Path(tempfile.mkdtemp(prefix="kcr-nbclient-suite-"))
    try:
        suite = download_sdist(version, tmp / "sdist")
        data_dir = tmp / "jupyter"
        env = dict(os.environ)
        env.pop("KCR_GATEWAY_URL", None)
        # nbclient's CLI test runs the jupyter-execute script of this environment
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if not args.stock:
            install_python3_spec(data_dir, args.gateway_url)
        else:
            (data_dir / "kernels").mkdir(parents=True)
        env.update(
            JUPYTER_PATH=str(data_dir),
            JUPYTER_DATA_DIR=str(data_dir),
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        )
        expected, deselected = expected_failures()
        report = tmp / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "tests",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-q",
            "--timeout=120",
            f"--junitxml={report}",
            *(f"--deselect={test}" for test in ([] if args.stock else deselected)),
            *args.pytest_args,
        ]
        started = time.monotonic()
        subprocess.run(cmd, cwd=suite, env=env)
        elapsed = time.monotonic() - started
        if not report.is_file():
            print("nbclient suite: pytest wrote no report", file=sys.stderr)
            return 2
        outcomes, total = junit_results(report)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = {t for t, o in outcomes.items() if o in ("failed", "error")}
    passed = sum(1 for o in outcomes.values() if o == "passed")
    skipped = sum(1 for o in outcomes.values() if o == "skipped")
    kernel = "stock ipykernel" if args.stock else f"kcr ({args.gateway_url or 'local mode'})"
    print(
        f"nbclient {version} suite on {kernel}: {total} tests, {passed} passed, "
        f"{len(failed)} failed, {skipped} skipped in {elapsed:.0f} s"
    )
    if args.stock:
        for test in sorted(failed):
            print(f"  failed: {test}")
        return 0
    unexpected = sorted(failed - set(expected))
    now_passing = sorted(t for t in set(expected) - failed if outcomes.get(t) == "passed")
    for test in unexpected:
        print(f"  UNEXPECTED FAILURE: {test}")
    for test in now_passing:
        print(f"  passes now, remove from {EXPECTED.name}: {test}")
    for test in sorted(failed & set(expected)):
        print(f"  expected failure: {test}  # {expected[test]}")
    for test, why in sorted(deselected.items()):
        print(f"  not run: {test}  # {why}")
    return 1 if unexpected or now_passing else 0


if __name__ == "__main__":
    sys.exit(main())

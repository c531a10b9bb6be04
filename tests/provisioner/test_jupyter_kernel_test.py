"""jupyter_kernel_test's standard kernel tests for ``kcr-python``, in local and gateway mode.

jupyter_kernel_test (the Jupyter project's conformance suite for kernels)
starts the kernel with jupyter_client, runs each kind of request and checks
the replies and iopub messages against its message schemas. Its tests are
``unittest`` classes that start the kernel by name in ``setUpClass``; the
module fixture below installs two kernelspecs into a temporary
``JUPYTER_PATH`` first: ``kcr-python-local`` (the bridge runs a sandboxed
runner itself) and ``kcr-python-gateway`` (the bridge relays to the real
``kcr-gateway`` the ``gateway`` fixture starts). Both are ``kcr-python`` under
another name.

Every sample below runs today. Comms and the debugger are not part of
jupyter_kernel_test 0.7, so nothing here waits for ipykernel's own kernel in
the worker (issue 13); those are covered by tests/browser and
tests/provisioner/test_notebooks.py.
"""

from __future__ import annotations

import json
import shutil

import jupyter_kernel_test as jkt
import pytest
from conftest import TOKEN
from jupyter_client.kernelspec import KernelSpecManager

from kcr_kernels.cli import packaged_specs, prepared_spec

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def kcr_kernelspecs(gateway, tmp_path_factory):
    """``kcr-python-local`` and ``kcr-python-gateway`` in a temporary ``JUPYTER_PATH``."""
    root = tmp_path_factory.mktemp("jupyter-kernel-test")
    manager = KernelSpecManager()
    for name, gateway_url in (("kcr-python-local", ""), ("kcr-python-gateway", gateway.url)):
        staged = root / "staged" / name
        prepared_spec(packaged_specs()["kcr-python"], staged, gateway_url, False)
        spec = json.loads((staged / "kernel.json").read_text())
        spec["display_name"] = f"Python 3 (kcr, {name.rsplit('-', 1)[1]})"
        (staged / "kernel.json").write_text(json.dumps(spec))
        manager.install_kernel_spec(str(staged), kernel_name=name, prefix=str(root / "prefix"))
    shutil.rmtree(root / "staged")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "prefix" / "share" / "jupyter"))
        mp.setenv("KCR_GATEWAY_TOKEN", TOKEN)
        mp.delenv("KCR_GATEWAY_URL", raising=False)
        yield


class KCRPythonSamples:
    """What each standard test runs; the expected answers are ipykernel's."""

    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ['print("""hello', "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "from IPython.display import HTML; HTML('<b>kcr</b>')", "mime": "text/html"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    # Not "range": IPython's HistoryManager numbers the current session 0 in a range reply,
    # so ipykernel fails that subtest too (jupyter_kernel_test's own ipykernel class omits it).
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestKCRPythonLocal(KCRPythonSamples, jkt.KernelTests):
    kernel_name = "kcr-python-local"


class TestKCRPythonGateway(KCRPythonSamples, jkt.KernelTests):
    kernel_name = "kcr-python-gateway"


class TestIopubWelcomeLocal(jkt.IopubWelcomeTests):
    kernel_name = "kcr-python-local"
    support_iopub_welcome = True


class TestIopubWelcomeGateway(jkt.IopubWelcomeTests):
    kernel_name = "kcr-python-gateway"
    support_iopub_welcome = True

"""Batch runs see the notebook's folder: ``KERNEL_WORKING_DIR`` in local and gateway mode.

nbclient runs a notebook in folder F (``resources.metadata.path``, which jupyter_client
passes on as the kernel's ``cwd``): the cells read F's files (a CSV and a PNG shown with
``IPython.display.Image``, like nbclient's "Inline Image" notebook) and write a file. Local
mode binds F as the sandbox's working folder (the written file is there at once, owned by the
user); gateway mode puts F's files into the kernel's working folder before the first cell
and brings the new file back at shutdown. Nothing outside F is visible to the kernel.
``kcr-kernels install-kernelspecs --as-default`` installs the spec as ``python3`` too, which
is what the notebook's metadata names.
"""

from __future__ import annotations

import base64
import json

import nbformat
from nbclient import NotebookClient

from kcr_kernels.cli import install_kernelspecs

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [
        nbformat.v4.new_code_cell("print(open('data.csv').read().strip())"),
        nbformat.v4.new_code_cell("from IPython.display import Image\nImage('python.png')"),
        nbformat.v4.new_code_cell(
            "import os\nopen('written.txt', 'w').write('from the kernel')\n"
            "print(os.path.exists('../outside.txt'))"
        ),
    ]
    return nb


def test_the_notebooks_folder_is_the_kernels_folder(kcr_spec, mode, run, tmp_path, gateway):
    install_kernelspecs(
        user=True, gateway_url=gateway.url if mode == "gateway" else "", as_default=True
    )
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "python.png").write_bytes(PNG)
    (tmp_path / "outside.txt").write_text("not for the kernel")
    nb = _notebook()
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    run(client.async_execute())
    assert nb.cells[0].outputs[0]["text"] == "a,b\n1,2\n"
    image = nb.cells[1].outputs[0]
    assert image["output_type"] == "execute_result", image
    assert base64.b64decode(image["data"]["image/png"]) == PNG
    assert nb.cells[2].outputs[0]["text"] == "False\n"
    assert (folder / "written.txt").read_text() == "from the kernel"
    assert (folder / "written.txt").stat().st_uid == (folder / "data.csv").stat().st_uid
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "python.png", "written.txt"]


def test_as_default_installs_python3_on_kcr(jp_environ, jp_data_dir):
    installed = install_kernelspecs(user=True, as_default=True, names=["kcr-python"])
    assert set(installed) == {"kcr-python", "python3"}
    spec = json.loads((jp_data_dir / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "kcr-provisioner"
    assert spec["argv"][1:3] == ["-m", "kcr_kernels.bridge"]

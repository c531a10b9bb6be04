"""What JupyterLab needs from kcr-gateway, through Jupyter Server's GatewayClient.

JupyterLab enables its debugger (the bug icon) only for kernels whose kernelspec,
as the server lists it, says ``metadata.debugger: true``; it does not look at
``kernel_info``. The spec travels kcr-gateway -> GatewayClient -> /api/kernelspecs.
"""

from __future__ import annotations


async def test_python_kernelspec_advertises_the_debugger_to_jupyterlab(api):
    specs = await api.call("GET", "/api/kernelspecs")
    metadata = specs["kernelspecs"]["kcr-python"]["spec"]["metadata"]
    assert metadata.get("debugger") is True, metadata

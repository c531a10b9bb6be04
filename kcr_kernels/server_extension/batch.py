"""The folder sync for batch runs (``jupyter execute``, nbclient, papermill) on a gateway.

The provisioner's gateway mode has no Jupyter Server around it; it uses
:func:`open_folder_sync` to put the files of the notebook's folder (jupyter_client's
``cwd``) into the kernel's working folder before the kernel starts, and to bring the
kernel's new and changed files back into it when the kernel shuts down. The rules and limits
are the extension's defaults (:class:`~.manager.KCRFolderSync`).
"""

from __future__ import annotations

from .folder_sync import KernelFolderSync
from .gateway_files import GatewayFiles
from .local_folder import LocalFolder, Rules

#: KCRFolderSync's defaults (kept here so the provisioner does not import traitlets config).
DEFAULT_RULES = Rules(
    skip_patterns=["__pycache__", "*.pyc"],
    max_file_bytes=256 << 20,
    max_bytes=1 << 30,
    max_files=5000,
)


def open_folder_sync(
    kernel_id: str, folder: str, gateway_url: str, headers: dict[str, str]
) -> KernelFolderSync:
    """The sync of ``folder`` with gateway kernel ``kernel_id`` (``headers``: the gateway's
    auth); close ``.files`` after use."""
    files = GatewayFiles(gateway_url, lambda **kw: {"headers": dict(headers)})
    return KernelFolderSync(
        kernel_id=kernel_id,
        folder=LocalFolder(folder),
        label=folder,
        files=files,
        rules=DEFAULT_RULES,
    )

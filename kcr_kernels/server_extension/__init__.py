"""kcr's Jupyter Server extension: the notebook's folder is the kernel's folder.

Installed with kcr-kernels (``etc/jupyter/jupyter_server_config.d/kcr_kernels.json``
enables it in the environment it is installed in). In a Jupyter Server that runs with
``--gateway-url`` pointing at a kcr gateway, it relays kernel WebSockets through
:class:`~.connection.FolderSyncConnection`, which syncs the folder of each kernel's notebook
(or console) with the kernel's working folder around every cell through the gateway's files
API (:mod:`.folder_sync`, options in :class:`~.manager.KCRFolderSync`). Without
``--gateway-url`` it does nothing: local kernels already run in the notebook's folder.
Turn it off with ``--KCRFolderSync.enabled=False`` or
``jupyter server extension disable kcr_kernels.server_extension``.
"""

from __future__ import annotations

from typing import Any

# Nothing is imported here at import time: the provisioner uses .folder_sync without
# loading Jupyter Server.


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "kcr_kernels.server_extension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.gateway.connections import GatewayWebSocketConnection

    from .connection import SETTINGS_KEY, FolderSyncConnection
    from .gateway_files import GatewayFiles
    from .manager import KCRFolderSync

    gateway = getattr(serverapp, "gateway_config", None)
    if gateway is None or not gateway.gateway_enabled:
        serverapp.log.debug("kcr folder sync: no --gateway-url, nothing to do")
        return
    settings = serverapp.web_app.settings
    current = settings.get("kernel_websocket_connection_class")
    if current is not GatewayWebSocketConnection and not (
        isinstance(current, type) and issubclass(current, FolderSyncConnection)
    ):
        serverapp.log.warning(
            "kcr folder sync is off: the kernel WebSocket class is %s, not Jupyter Server's "
            "gateway connection",
            current,
        )
        return
    manager = KCRFolderSync(
        parent=serverapp,
        root_dir=serverapp.root_dir,
        session_manager=serverapp.session_manager,
        files=GatewayFiles(
            gateway.url,
            gateway.load_connection_args,
            kernels_endpoint=gateway.kernels_endpoint,
        ),
    )
    manager.files.timeout = manager.request_timeout
    settings[SETTINGS_KEY] = manager
    settings["kernel_websocket_connection_class"] = FolderSyncConnection
    state = "on" if manager.enabled else "off (KCRFolderSync.enabled)"
    serverapp.log.info("kcr folder sync is %s for kernels on %s", state, gateway.url)

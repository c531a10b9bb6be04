"""A real kcr-gateway with the files API and workspace sync attached, for the tests.

Until ``KCRGateway`` configures the file store itself, :class:`FilesGateway` does the
wiring the lead integrates: a :class:`WorkspaceSync` on the kernel manager (restore after
every pod attach, sync after every cell, forget on delete) and in the web app's settings,
plus :func:`files_handlers` under ``base_url``.
"""

from __future__ import annotations

from jupyter_server.utils import url_path_join
from kcr_gateway.app import KCRGateway
from kcr_gateway.files import files_handlers
from traitlets.config import Config

from kcr_kernels.stores import open_file_store
from kcr_kernels.workspace_sync import WorkspaceSync

TOKEN = "files-test-token"


class FilesGateway(KCRGateway):
    """KCRGateway + file store, per-file/per-kernel limits and a larger runner body limit."""

    files_options: dict = {}

    def init_components(self) -> None:
        super().init_components()
        opts = self.files_options
        store = open_file_store(opts["url"], **opts.get("store_options", {}))
        self.workspace_sync = WorkspaceSync(
            store,
            max_file_bytes=opts.get("max_file_bytes"),
            max_kernel_bytes=opts.get("max_kernel_bytes"),
            log=self.log,
        )
        self.kernel_manager.files = self.workspace_sync

    def make_backend(self):
        backend = super().make_backend()
        # The runner buffers a PUT body; let it take the biggest file the tests move.
        backend.runner_args += ["--max-request-bytes", str(300 << 20)]
        return backend

    def make_web_app(self):
        app = super().make_web_app()
        app.add_handlers(
            ".*$", [(url_path_join(self.base_url, p), *rest) for p, *rest in files_handlers()]
        )
        app.settings["kcr_workspace_sync"] = self.workspace_sync
        return app

    async def stop_async(self) -> None:
        await super().stop_async()
        await self.workspace_sync.store.close()


async def start_files_gateway(tmp_path, files_options: dict, **traits) -> FilesGateway:
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(tmp_path / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 1}}
    config.KCRGateway.auth_token = TOKEN
    for name, value in traits.items():
        setattr(config.KCRGateway, name, value)
    app = FilesGateway(config=config)
    app.files_options = files_options
    await app.start_async()
    await app.pool.wait_warm(60)
    return app

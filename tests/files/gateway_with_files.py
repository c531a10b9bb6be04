"""A real kcr-gateway (its own files wiring) on a given file store, for the tests.

``KCRGateway`` builds the :class:`WorkspaceSync` from its traits (``files_url``,
``s3_endpoint_url``, ``max_file_bytes``, ...) and takes S3 credentials from the usual
``AWS_*`` sources; :class:`FilesGateway` only swaps in a store opened with the test S3
server's explicit credentials, and lets runners accept the 200 MB test file.
"""

from __future__ import annotations

from kcr_gateway.app import KCRGateway
from traitlets.config import Config

from kcr_kernels.stores import open_file_store

TOKEN = "files-test-token"


class FilesGateway(KCRGateway):
    """KCRGateway on ``files_options`` (``url`` + ``open_file_store`` keyword arguments)."""

    files_options: dict = {}

    def init_components(self) -> None:
        super().init_components()
        opts = self.files_options
        # No I/O happened on the default store yet; the test store replaces it.
        self.workspace_sync.store = open_file_store(opts["url"], **opts.get("store_options", {}))

    async def stop_async(self) -> None:
        await super().stop_async()
        await self.workspace_sync.store.close()


async def start_files_gateway(tmp_path, files_options: dict, **traits) -> FilesGateway:
    config = Config()
    config.KCRGateway.port = 0
    config.KCRGateway.data_dir = str(tmp_path / "kcr")
    config.KCRGateway.pools = {"python": {"warm": 1}}
    config.KCRGateway.auth_token = TOKEN
    config.KCRGateway.max_file_bytes = 0  # no limits unless a test sets them
    config.KCRGateway.max_kernel_bytes = 0
    for name, value in traits.items():
        setattr(config.KCRGateway, name, value)
    app = FilesGateway(config=config)
    app.files_options = files_options
    await app.start_async()
    await app.pool.wait_warm(60)
    return app

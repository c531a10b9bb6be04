"""``KCRFolderSync``: which kernels sync with which folder, and the options of the sync.

One instance lives in a Jupyter Server that runs with ``--gateway-url`` (see
:mod:`kcr_kernels.server_extension`). For a kernel it finds the folder of the notebook or
console the kernel was started for from the server's sessions (so a notebook renamed or
moved in JupyterLab moves its sync along), decides whether that folder syncs (the
``enabled`` and ``exclude_folders`` options, the notebook's ``metadata.kcr.folder_sync``
flag), and keeps one :class:`~.folder_sync.KernelFolderSync` per kernel. Every option is a
traitlet: ``--KCRFolderSync.max_files=…`` or ``c.KCRFolderSync.…`` in
``jupyter_server_config.py``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
from typing import Any

from traitlets import Bool, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from .folder_sync import KernelFolderSync
from .gateway_files import GatewayFiles
from .local_folder import LocalFolder, Rules

#: Notebook metadata that turns the sync off for one notebook: ``{"kcr": {"folder_sync": false}}``.
METADATA_KEY = "kcr"
METADATA_FLAG = "folder_sync"


class KCRFolderSync(LoggingConfigurable):
    """Keeps each kcr kernel's working folder in sync with its notebook's folder.

    Contract: :meth:`for_kernel` returns the kernel's sync for its current folder, or
    ``None`` when the kernel has no notebook/console session, the sync is off for it, or
    its folder is outside the server's root. Callers run ``before_cell`` / ``after_cell``
    on it; nothing here raises for a gateway or disk problem (those become notices).
    """

    enabled = Bool(
        True,
        config=True,
        help="Sync the folder of each notebook (and console) with its kernel's working folder.",
    )
    exclude_folders = List(
        Unicode(),
        config=True,
        help="Folders (paths relative to the server's root, shell patterns; '' is the root) "
        "whose notebooks do not sync.",
    )
    skip_patterns = List(
        Unicode(),
        default_value=["__pycache__", "*.pyc"],
        config=True,
        help="Names never synced (shell patterns matched against each path segment and the "
        "whole relative path). Hidden names (.git, .ipynb_checkpoints, …) never sync either.",
    )
    max_files = Int(
        5000,
        config=True,
        help="A folder with more files than this does not sync at all (with a notice); "
        "0: no limit.",
    )
    max_bytes = Int(
        1 << 30,
        config=True,
        help="Bytes of one folder that sync, all files together; files beyond it are "
        "skipped with a notice. 0: no limit.",
    )
    max_file_bytes = Int(
        256 << 20,
        config=True,
        help="Larger files are not synced (either way), with a notice. 0: no limit.",
    )
    wait_timeout = Float(
        10.0,
        config=True,
        help="Seconds a cell (or its reply) waits for the sync; a longer sync goes on in the "
        "background and the cell runs.",
    )
    request_timeout = Float(
        120.0, config=True, help="Seconds one files API call to the gateway may take."
    )

    def __init__(self, *, root_dir: str, session_manager: Any, files: GatewayFiles, **kwargs):
        super().__init__(**kwargs)
        self.root_dir = os.path.realpath(root_dir)
        self.session_manager = session_manager
        self.files = files
        self._kernels: dict[str, KernelFolderSync] = {}
        self._metadata_cache: dict[str, tuple[int, bool]] = {}

    def rules(self) -> Rules:
        return Rules(
            skip_patterns=list(self.skip_patterns),
            max_file_bytes=self.max_file_bytes,
            max_bytes=self.max_bytes,
            max_files=self.max_files,
        )

    def session_path(self, kernel_id: str) -> str | None:
        """The API path of the notebook/console session of ``kernel_id`` (None: none)."""
        cursor = getattr(self.session_manager, "cursor", None)
        if cursor is None:
            return None
        row = cursor.execute(
            "SELECT path, type FROM session WHERE kernel_id=?", (kernel_id,)
        ).fetchone()
        if row is None:
            return None
        path, kind = row[0], row[1]
        if kind not in ("notebook", "console", "", None) or not path:
            return None
        return path

    async def for_kernel(self, kernel_id: str) -> KernelFolderSync | None:
        if not self.enabled:
            return None
        path = self.session_path(kernel_id)
        if path is None:
            return None
        folder_api = path.strip("/").rpartition("/")[0]
        if any(fnmatch.fnmatchcase(folder_api, p) for p in self.exclude_folders):
            return None
        folder = await asyncio.to_thread(self._locate, folder_api, path)
        if folder is None:
            return None
        current = self._kernels.get(kernel_id)
        if current is not None and current.folder.root == folder:
            return current
        if current is not None:  # the notebook moved to another folder
            await current.leave()
        sync = KernelFolderSync(
            kernel_id=kernel_id,
            folder=LocalFolder(folder),
            label=(folder_api or "the notebook's folder") + ("/" if folder_api else ""),
            files=self.files,
            rules=self.rules(),
        )
        self._kernels[kernel_id] = sync
        self.log.info("kcr folder sync: kernel %s ↔ %s", kernel_id, folder)
        return sync

    def _locate(self, folder_api: str, path: str) -> str | None:
        """The folder to sync for the session at ``path``, ``None`` when it does not sync."""
        folder = self._folder(folder_api)
        if folder is None or (path.endswith(".ipynb") and not self._notebook_allows(path)):
            return None
        return folder

    def _folder(self, folder_api: str) -> str | None:
        """The folder on disk, if it exists inside the server's root (no link leads out)."""
        folder = os.path.realpath(os.path.join(self.root_dir, folder_api))
        if folder != self.root_dir and not folder.startswith(self.root_dir + os.sep):
            return None
        return folder if os.path.isdir(folder) else None

    def _notebook_allows(self, path: str) -> bool:
        """False when the notebook's metadata says ``"kcr": {"folder_sync": false}``."""
        full = os.path.join(self.root_dir, path)
        try:
            mtime = os.stat(full).st_mtime_ns
        except OSError:
            return True
        cached = self._metadata_cache.get(full)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        allowed = True
        try:
            with open(full, encoding="utf-8") as f:
                meta = json.load(f).get("metadata", {}).get(METADATA_KEY, {})
            allowed = meta.get(METADATA_FLAG, True) is not False
        except (OSError, ValueError, AttributeError):
            pass
        self._metadata_cache[full] = (mtime, allowed)
        return allowed

    def forget(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)

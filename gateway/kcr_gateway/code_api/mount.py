"""Putting the code API into a gateway: its routes and its idle-session sweeper."""

from __future__ import annotations

import asyncio

from .config import KCRCodeAPI
from .handlers import CodeAPI, code_api_handlers
from .keys import KeyRing
from .sessions import CodeSessions


class CodeAPIMount:
    """The code API of one gateway: :meth:`handlers` for its web app, :meth:`start` /
    :meth:`stop` for the sweeper task (owned here, cancelled on stop)."""

    def __init__(self, config: KCRCodeAPI, api: CodeAPI):
        self.config = config
        self.api = api
        self._sweeper: asyncio.Task | None = None
        self._stopped = False

    def handlers(self) -> list[tuple]:
        return code_api_handlers(self.config.prefix, self.api)

    def start(self) -> None:
        if self.config.sweep_interval > 0 and (self.config.idle_timeout or self.config.session_ttl):
            self._sweeper = asyncio.create_task(
                self.api.sessions.run_sweeper(self.config.sweep_interval, lambda: self._stopped)
            )

    async def stop(self) -> None:
        self._stopped = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except (asyncio.CancelledError, Exception):
                pass


def mount_code_api(app, languages: list[str]) -> CodeAPIMount | None:
    """The code API for the gateway ``app`` (None when ``KCRCodeAPI.enabled`` is off).

    Raises ``OSError`` for an unreadable keys file and ``ValueError`` for a bad key.
    """
    config = KCRCodeAPI(parent=app, log=app.log)
    if not config.enabled:
        return None
    keys = KeyRing(config.keys, config.keys_file, log=app.log)
    sessions = CodeSessions(
        app.kernel_manager,
        app.workspace_sync,
        languages,
        config.call_limits(),
        idle_timeout=config.idle_timeout,
        session_ttl=config.session_ttl,
        log=app.log,
    )
    auth_on = app.identity_provider.auth_enabled
    if not keys.enabled:
        if auth_on:
            app.log.warning(
                "Code API: no keys configured (KCRGateway.code_api_keys): it refuses every "
                "call while the gateway has authentication on"
            )
        else:
            app.log.warning("Code API: no keys configured, so it is open (as the Jupyter API)")
    return CodeAPIMount(config, CodeAPI(config, sessions, keys, auth_on))

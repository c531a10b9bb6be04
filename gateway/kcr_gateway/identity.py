"""Who is calling: token authentication on jupyter_server's IdentityProvider.

The gateway is an API server: the client's token comes from ``Authorization: token <t>``
(or ``Bearer``) or ``?token=<t>``; no cookies are set, there is no login page. A token is
looked up, in this order, in

1. ``KCRGateway.auth_token`` — the single shared token of earlier versions: one identity,
   named ``token_username`` (default ``admin``), with the admin role;
2. the token file (``token_file``, see :mod:`kcr_gateway.tokens`): hashed tokens, each
   naming a user and a role, reloaded when the file changes;
3. JupyterHub (``hub_api_url``, see :mod:`kcr_gateway.hub`): the Hub says whose token
   it is; Hub admins are admins here.

The first source that knows the token decides. A token nobody knows is a 403; a Hub that
cannot be asked is a 503 with a JSON reason (fail closed). With no source configured,
authentication is off and every request (including one with an empty
``Authorization: token `` header, as jupyter_server's GatewayClient sends) is the
anonymous user.

The identity is a :class:`KCRUser` (a jupyter_server ``User`` with ``admin`` and
``source``); :mod:`kcr_gateway.ownership` uses it to decide which kernels a caller sees.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Float, Set, Unicode, default

from .help_defaults import shown_default
from .hub import HubAuthenticator, HubUnavailable
from .tokens import TokenFile

HOW_TO_SEND = "send it as the header 'Authorization: token <token>' or as '?token=<token>'"


def token_required_message(offered: bool) -> str:
    """The 403 message for a request that is not authenticated (with or without a token)."""
    if offered:
        return f"The token sent is not valid for this gateway: {HOW_TO_SEND}"
    return f"This gateway requires a token: {HOW_TO_SEND}"


@dataclass
class KCRUser(User):
    """An authenticated caller: ``username`` is the identity kernels belong to."""

    admin: bool = False
    source: str = ""  # "auth_token", "token_file", "jupyterhub" or "anonymous"


class KCRIdentityProvider(IdentityProvider):
    """Tokens from the shared token, a token file and JupyterHub; no login page, no cookies."""

    token_username = Unicode(
        "admin",
        config=True,
        help="The identity of KCRGateway.auth_token (the single shared token); it is an admin.",
    )
    token_file = shown_default(
        Unicode(
            config=True,
            help="A file of hashed tokens, one identity a line: 'sha256:<hex> user [admin]' "
            "(make lines with 'kcr-gateway hash-token USER'). Reloaded when it changes.",
        ),
        "$KCR_TOKEN_FILE, else '' (none)",
    )

    @default("token_file")
    def _token_file_default(self) -> str:
        return os.environ.get("KCR_TOKEN_FILE", "")

    token_file_interval = Float(
        1.0, config=True, help="Seconds between checks of the token file for changes."
    )
    hub_api_url = shown_default(
        Unicode(
            config=True,
            help="JupyterHub's API URL (http://hub:8081/hub/api): tokens are checked with "
            "GET <url>/user. Empty: no JupyterHub tokens.",
        ),
        "$JUPYTERHUB_API_URL, else '' (no JupyterHub)",
    )

    @default("hub_api_url")
    def _hub_api_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    hub_access_scopes = Set(
        Unicode(),
        config=True,
        help="A JupyterHub token needs one of these scopes. Default: "
        "$JUPYTERHUB_OAUTH_ACCESS_SCOPES (JSON list), else "
        "access:services!service=$JUPYTERHUB_SERVICE_NAME; empty: any Hub user.",
    )

    @default("hub_access_scopes")
    def _hub_access_scopes_default(self) -> set[str]:
        env = os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES")
        if env:
            try:
                scopes = json.loads(env)
            except ValueError:
                scopes = None
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                # A bad value must not turn into "no scope needed".
                self.log.error("$JUPYTERHUB_OAUTH_ACCESS_SCOPES is not a JSON list of strings")
                return {"!unusable-JUPYTERHUB_OAUTH_ACCESS_SCOPES"}
            return set(scopes)
        service = os.environ.get("JUPYTERHUB_SERVICE_NAME")
        return {f"access:services!service={service}"} if service else set()

    hub_cache_seconds = Float(
        300.0, config=True, help="Seconds a JupyterHub token's identity is cached."
    )
    hub_timeout = Float(5.0, config=True, help="Seconds to wait for JupyterHub's answer.")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tokens: TokenFile | None = None
        self.hub: HubAuthenticator | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Load the token file (OSError if unreadable) and follow its changes."""
        if self.token_file:
            self.tokens = TokenFile(self.token_file, self.log, interval=self.token_file_interval)
            self.tokens.load()
            self.log.info("Token file %s: %d identities", self.token_file, len(self.tokens.entries))
            self.tokens.start()
        if self.hub_api_url:
            self.hub = HubAuthenticator(
                self.hub_api_url,
                self.log,
                access_scopes=self.hub_access_scopes,
                cache_seconds=self.hub_cache_seconds,
                timeout=self.hub_timeout,
            )
            self.log.info(
                "JupyterHub tokens are checked with %s (scopes needed: %s)",
                self.hub.url,
                ", ".join(sorted(self.hub_access_scopes)) or "none: any Hub user",
            )

    async def stop(self) -> None:
        if self.tokens is not None:
            await self.tokens.stop()

    # -- IdentityProvider ---------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token or self.token_file or self.hub_api_url)

    @property
    def login_available(self) -> bool:
        return False

    def generate_anonymous_user(self, handler) -> User:
        return KCRUser("anonymous", "Anonymous", "Anonymous", "A", source="anonymous")

    async def get_user_token(self, handler) -> User | None:
        if not self.auth_enabled:
            return None
        offered = self.get_token(handler) or ""
        if not offered:
            return None
        return await self.identify(offered)

    async def identify(self, offered: str) -> KCRUser | None:
        """The identity of a token (see the module doc); 503 when the Hub cannot say."""
        if self.token and hmac.compare_digest(offered.encode(), self.token.encode()):
            return KCRUser(self.token_username, admin=True, source="auth_token")
        if self.tokens is not None:
            entry = self.tokens.lookup(offered)
            if entry is not None:
                return KCRUser(entry.username, admin=entry.admin, source="token_file")
        if self.hub is not None:
            try:
                found = await self.hub.identify(offered)
            except HubUnavailable:
                raise web.HTTPError(
                    503, "The token could not be checked with JupyterHub; try again later"
                ) from None
            if found is not None:
                return KCRUser(found.username, admin=found.admin, source="jupyterhub")
        return None

    def get_user_cookie(self, handler) -> None:
        return None

    def set_login_cookie(self, handler, user) -> None:
        return None

    def clear_login_cookie(self, handler) -> None:
        return None

    def should_check_origin(self, handler) -> bool:
        return handler.settings.get("allow_origin") != "*" and not self.is_token_authenticated(
            handler
        )

    def validate_security(self, app, ssl_options=None) -> None:
        if not self.auth_enabled:
            self.log.warning(
                "No auth token set: every client that can reach this port can run code. "
                "Set --KCRGateway.auth_token or KCR_AUTH_TOKEN, or a token file."
            )

"""Token authentication for the gateway, on jupyter_server's IdentityProvider.

The gateway is an API server: a single shared token (``KCRGateway.auth_token``)
is checked on every request, from ``Authorization: token <t>`` (or
``Bearer``) or ``?token=<t>``. No cookies are set. With no token configured,
authentication is off and every request (including one with an empty
``Authorization: token `` header, as jupyter_server's GatewayClient sends) is
accepted as an anonymous user.
"""

from __future__ import annotations

import hmac

from jupyter_server.auth.identity import IdentityProvider, User


class KCRIdentityProvider(IdentityProvider):
    """Shared-token authentication; no login page, no cookies."""

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token)

    @property
    def login_available(self) -> bool:
        return False

    def generate_anonymous_user(self, handler) -> User:
        return User("anonymous", "Anonymous", "Anonymous", "A", None, None)

    async def get_user_token(self, handler) -> User | None:
        if not self.token:
            return None
        offered = self.get_token(handler) or ""
        if hmac.compare_digest(offered.encode(), self.token.encode()):
            return self.generate_anonymous_user(handler)
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
        if not self.token:
            self.log.warning(
                "No auth token set: every client that can reach this port can run code. "
                "Set --KCRGateway.auth_token or KCR_AUTH_TOKEN."
            )

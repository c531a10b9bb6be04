"""FakeHub: a JupyterHub API double on 127.0.0.1 that speaks ``GET /hub/api/user``.

The contract it copies (the one ``jupyterhub.services.auth.HubAuth`` relies on): the
request carries ``Authorization: token <a user's token>``; the answer is that user's
model ``{"kind": "user", "name", "admin", "groups", "scopes"}``, or 403 with a JSON
error for a token the Hub does not know.

Use::

    hub = FakeHub()
    await hub.start()
    hub.add_token("tok-alice", "alice", scopes=["access:services!service=kcr"])
    ... JUPYTERHUB_API_URL = hub.api_url ...
    hub.mode = "down"      # every request: the connection is closed without an answer
    hub.mode = "html"      # 200 with an HTML page (a proxy's error page, say)
    hub.mode = "not-user"  # 200 with JSON that is not a user model
    await hub.stop()

``requests`` counts the ``/user`` requests received (to see what the gateway cached).
"""

from __future__ import annotations

import json

from tornado import httpserver, web
from tornado.netutil import bind_sockets


class FakeHub:
    """A real tornado HTTP server; see the module doc."""

    def __init__(self):
        self.users: dict[str, dict] = {}
        self.mode = ""
        self.requests = 0
        self.server: httpserver.HTTPServer | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    def add_token(
        self,
        token: str,
        name: str,
        admin: bool = False,
        groups: list[str] | None = None,
        scopes: list[str] | None = None,
        kind: str = "user",
    ) -> None:
        self.users[token] = {
            "kind": kind,
            "name": name,
            "admin": admin,
            "groups": groups or [],
            "scopes": scopes if scopes is not None else ["access:services"],
        }

    def remove_token(self, token: str) -> None:
        self.users.pop(token, None)

    async def start(self) -> None:
        hub = self

        class UserHandler(web.RequestHandler):
            def get(self):
                hub.requests += 1
                if hub.mode == "down":
                    self.request.connection.close()
                    return
                if hub.mode == "html":
                    self.set_header("Content-Type", "text/html")
                    self.finish("<html><body>502 Bad Gateway</body></html>")
                    return
                if hub.mode == "not-user":
                    self.finish(json.dumps(["not", "a", "user"]))
                    return
                header = self.request.headers.get("Authorization", "")
                scheme, _, token = header.partition(" ")
                model = hub.users.get(token.strip()) if scheme.lower() == "token" else None
                if model is None:
                    self.set_status(403)
                    self.finish({"status": 403, "message": "Forbidden"})
                    return
                self.finish(model)

        app = web.Application([(r"/hub/api/user", UserHandler)])
        sockets = bind_sockets(0, "127.0.0.1")
        self.server = httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None

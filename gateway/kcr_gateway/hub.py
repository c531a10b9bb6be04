"""JupyterHub API tokens, checked with the Hub (the gateway runs as a Hub service).

The Hub's contract (the one ``jupyterhub.services.auth.HubAuth`` uses):
``GET {JUPYTERHUB_API_URL}/user`` with ``Authorization: token <the client's token>``
answers the model of the token's owner — ``{"kind": "user", "name", "admin",
"groups", "scopes"}`` — or 403 (401, 404) for a token it does not know.

Contract of :meth:`HubAuthenticator.identify`:

* a known user token whose scopes allow this service → a :class:`HubIdentity`, cached
  for ``cache_seconds`` (keyed by the token's SHA-256; the token itself is not kept);
* a token the Hub refuses, a token of a service (not a user), or one without a required
  scope → ``None`` (the client gets 403);
* the Hub unreachable, timing out, answering 5xx, or answering something that is not a
  JSON user model → :class:`HubUnavailable` (the client gets 503): never an identity.
  Identities cached before keep working until their cache entry expires. The first
  failure is one error log line; repeats of the same failure are debug lines, and the
  recovery is one info line.

Required scopes: ``access_scopes`` (default ``$JUPYTERHUB_OAUTH_ACCESS_SCOPES``, else
``access:services!service=$JUPYTERHUB_SERVICE_NAME``); a token passes when one of its
scopes is a required scope or the same scope without its ``!filter``
(``access:services`` covers ``access:services!service=kcr``). With no required scopes,
every Hub user's token is accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


class HubUnavailable(Exception):
    """The Hub could not say whether a token is good (down, slow, or a bad answer)."""


@dataclass(frozen=True)
class HubIdentity:
    username: str
    admin: bool
    groups: tuple[str, ...]


class HubAuthenticator:
    """Checks tokens with the Hub's ``/user`` endpoint and caches the answers."""

    def __init__(
        self,
        api_url: str,
        log,
        access_scopes: set[str] | frozenset[str] = frozenset(),
        cache_seconds: float = 300.0,
        timeout: float = 5.0,
    ):
        self.url = api_url.rstrip("/") + "/user"
        self.log = log
        self.access_scopes = frozenset(access_scopes)
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cache: dict[str, tuple[float, HubIdentity]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._failing: str | None = None  # the last failure, while the Hub keeps failing

    async def identify(self, token: str) -> HubIdentity | None:
        """The Hub user of ``token`` (see the module doc); HubUnavailable if unknown."""
        if not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is None:  # one Hub request per token at a time
            pending = self._inflight[key] = asyncio.ensure_future(self._ask(token))
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        identity = await asyncio.shield(pending)
        if identity is not None and self.cache_seconds > 0:
            self._purge(now)
            self._cache[key] = (time.monotonic() + self.cache_seconds, identity)
        return identity

    def _purge(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]

    async def _ask(self, token: str) -> HubIdentity | None:
        request = HTTPRequest(
            self.url,
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            request_timeout=self.timeout,
            connect_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as e:  # connection refused, DNS, timeout...
            self._failed(f"unreachable ({type(e).__name__}: {e})")
        if response.code == 599:  # tornado's own transport error
            self._failed(f"unreachable ({response.error})")
        if response.code in (401, 403, 404):
            self._recovered()
            return None
        if response.code != 200:
            self._failed(f"answered HTTP {response.code}")
        try:
            model = json.loads(response.body)
        except ValueError:
            ctype = response.headers.get("Content-Type", "?")
            self._failed(f"answered something that is not JSON (Content-Type {ctype})")
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            self._failed("answered JSON that is not a user model (no 'name')")
        self._recovered()
        return self._identity(model)

    def _identity(self, model: dict) -> HubIdentity | None:
        name = model["name"]
        if model.get("kind", "user") != "user":
            self.log.warning(
                "JupyterHub token of %s %r refused: only user tokens are accepted",
                model.get("kind"),
                name,
            )
            return None
        if self.access_scopes and not self._scopes_allow(model.get("scopes")):
            self.log.warning(
                "JupyterHub token of %r refused: it has none of the scopes %s",
                name,
                ", ".join(sorted(self.access_scopes)),
            )
            return None
        groups = model.get("groups")
        groups = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()
        return HubIdentity(name, model.get("admin") is True, groups)

    def _scopes_allow(self, scopes) -> bool:
        if not isinstance(scopes, list):
            return False
        have = {s for s in scopes if isinstance(s, str)}
        return any(scope in have or scope.split("!", 1)[0] in have for scope in self.access_scopes)

    def _failed(self, why: str):
        if self._failing != why:
            self.log.error(
                "JupyterHub API at %s %s: JupyterHub tokens are refused until it answers "
                "(cached identities last until they expire)",
                self.url,
                why,
            )
        else:
            self.log.debug("JupyterHub API at %s still %s", self.url, why)
        self._failing = why
        raise HubUnavailable(f"JupyterHub at {self.url} {why}")

    def _recovered(self) -> None:
        if self._failing is not None:
            self.log.info("JupyterHub API at %s answers again", self.url)
            self._failing = None

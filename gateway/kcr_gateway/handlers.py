"""HTTP routes of the gateway: Jupyter Kernel Gateway's jupyter-websocket API + kcr extras.

jupyter_server's own handlers serve kernels, kernelspecs, kernelspec
resources and the kernel WebSocket; only kernel creation is extended (the
request's ``env``, kernel limits) and listing made switchable, as in Kernel
Gateway. Errors are JSON ``{"reason", "message"}`` everywhere.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import jupyter_server
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated, authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.kernelspecs import handlers as ksr_handlers
from jupyter_server.services.kernels import handlers as kernel_handlers
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from jupyter_server.services.kernelspecs.handlers import KernelSpecHandler, MainKernelSpecHandler
from jupyter_server.utils import url_escape, url_path_join
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import httputil, web

from . import __version__, metrics
from .ownership import username_of
from .ws_limits import SlotRefused

_KERNEL_ID = r"(?P<kernel_id>[\w-]+)"


class JSONErrors:
    """``write_error`` for API handlers: ``{"reason", "message"}``, never a traceback.

    An ``HTTPError`` keeps its message; any other exception is logged (with its
    traceback, by tornado) and answered with a generic 500 that names no internals.
    """

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json")
        reason = httputil.responses.get(status_code, "Unknown HTTP Error")
        message = reason
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            reason = exc.reason or reason
            message = (
                exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            )
            message = message or reason
        elif exc is not None:
            message = "Internal error in the gateway; see its log"
        self.finish(json.dumps({"reason": reason, "message": message}))


def with_json_errors(routes: list[tuple]) -> list[tuple]:
    """The routes, each API handler (ours and jupyter_server's) answering errors as JSON."""
    wrapped = []
    for pattern, handler, *rest in routes:
        if issubclass(handler, APIHandler) and not issubclass(handler, JSONErrors):
            handler = type(handler.__name__, (JSONErrors, handler), {"__doc__": handler.__doc__})
        wrapped.append((pattern, handler, *rest))
    return wrapped


class KernelsHandler(kernel_handlers.MainKernelHandler):
    """``GET /api/kernels`` (if listing is allowed) and ``POST /api/kernels``.

    The POST body is ``{"name": kernelspec, "env": {...}, "kernel_id": uuid}``;
    ``KERNEL_*`` variables and those the operator allows (``KCRGateway.env_whitelist``)
    are passed to the kernel, the rest of ``env`` is ignored. A ``kernel_id`` the client
    chooses must be a UUID in canonical form (400 otherwise). The kernel belongs to the
    caller's identity. Limits on the number of kernels (global, per user) are a 403: the
    per-user limit counts the kernels of the caller's identity when authentication is on,
    else those with the same ``KERNEL_USERNAME``. With kernel ownership on,
    ``KERNEL_USERNAME`` is set from the identity. Listing shows only the kernels the
    caller may use (see :mod:`kcr_gateway.ownership`).
    """

    @web.authenticated
    @authorized
    async def get(self):
        if not self.settings["kcr_list_kernels"]:
            raise web.HTTPError(403, "Listing kernels is disabled on this gateway")
        kernels, complete = await self.kernel_manager.list_kernels_from_registry(
            user=self.authorizer.list_owner(self.current_user)
        )
        # The registry did not answer: this gateway's own kernels only, and it says so.
        self.set_header("X-KCR-Registry", "ok" if complete else "unreachable")
        self.finish(json.dumps(kernels))

    @web.authenticated
    @authorized
    async def post(self):
        km = self.kernel_manager
        model = self.get_json_body() or {}
        if not isinstance(model, dict):
            raise web.HTTPError(400, "The request body must be a JSON object")
        name = model.get("name") or km.default_kernel_name
        env = model.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise web.HTTPError(400, "'env' must be an object of string values")
        kernel_id = model.get("kernel_id")
        if kernel_id is not None and not _is_uuid(kernel_id):
            raise web.HTTPError(
                400,
                "'kernel_id' must be a UUID in canonical form "
                "(like 0b7e5e52-1b9a-4c4e-9a7e-1f2d3c4b5a69), or left out",
            )
        allowed = set(self.settings["kcr_env_whitelist"])
        env = {k: v for k, v in env.items() if k.startswith("KERNEL_") or k in allowed}
        user = self.current_user
        env = self.authorizer.start_env(user, env)
        self._check_limits(user, env.get("KERNEL_USERNAME", ""))
        kernel_id = await km.start_kernel(
            kernel_name=name,
            path=model.get("path"),
            kernel_id=kernel_id,
            env=env,
            user=username_of(user),
        )
        location = url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id))
        self.set_header("Location", location)
        self.set_status(201)
        self.finish(json.dumps(await km.kernel_model(kernel_id)))

    def _check_limits(self, user, kernel_username: str) -> None:
        km = self.kernel_manager
        limit = self.settings["kcr_max_kernels"]
        if limit and len(km) >= limit:
            raise web.HTTPError(
                403, f"Resource Limit: this gateway already runs its maximum of {limit} kernels"
            )
        per_user = self.settings["kcr_max_kernels_per_user"]
        if not per_user:
            return
        if self.identity_provider.auth_enabled:  # the identity, never a client-chosen name
            username, running = username_of(user), km.kernels_owned_by(username_of(user))
        else:  # no identities: the client's KERNEL_USERNAME is all there is
            username = kernel_username
            running = km.kernels_of(username) if username else 0
        if running >= per_user:
            raise web.HTTPError(
                403, f"Resource Limit: {username} already runs the maximum of {per_user} kernels"
            )


def _is_uuid(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class KernelActionHandler(kernel_handlers.KernelActionHandler):
    """``POST /api/kernels/{id}/interrupt|restart``; an unknown kernel is a 404, not a 500."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id, action):
        await self.kernel_manager.adopt(kernel_id)
        await super().post(kernel_id, action)


class KernelChannelsHandler(KernelWebsocketHandler):
    """The kernel WebSocket; the kernel may first need loading from the registry.

    A socket over the WebSocket caps (per kernel, per identity, gateway-wide:
    ``KCRWebsocketConnection.max_connections*``) is refused *before* the upgrade with
    HTTP 429 ``{"reason", "message"}`` and ``Retry-After``, so an excess socket costs one
    short HTTP answer, never a session; refusals are logged at most once per
    ``REFUSAL_LOG_SECONDS`` (with the count since the last line).
    """

    REFUSAL_LOG_SECONDS = 5.0
    _refusals = {"count": 0, "logged_at": -1e9}  # shared by every socket of the process

    @ws_authenticated
    async def get(self, kernel_id):
        await self.kernel_manager.adopt(kernel_id)
        slots = self.settings.get("kcr_ws_slots")
        if slots is None:
            connection_class = self.kernel_websocket_connection_class
            slots = self.settings["kcr_ws_slots"] = connection_class.slots(self.config)
        try:
            slot = slots.reserve(kernel_id, self._identity())
        except SlotRefused as e:
            self._refuse(str(e))
            return
        try:
            await super().get(kernel_id)
        finally:
            slots.release(slot)

    def _identity(self) -> str:
        """Whose sockets these are: the user when there are identities, else the address."""
        if self.identity_provider.auth_enabled:
            return "user " + username_of(self.current_user)
        return "client " + (self.request.remote_ip or "?")

    def _refuse(self, message: str) -> None:
        refusals = self._refusals
        refusals["count"] += 1
        now = time.monotonic()
        if now - refusals["logged_at"] >= self.REFUSAL_LOG_SECONDS:
            self.log.warning(
                "refused %d kernel WebSocket(s) before the upgrade, the latest: %s",
                refusals["count"],
                message,
            )
            refusals.update(count=0, logged_at=now)
        self.set_status(429)
        self.set_header("Content-Type", "application/json")
        self.set_header("Retry-After", "1")
        self.finish(json.dumps({"reason": "Too Many WebSockets", "message": message}))

    async def on_message(self, ws_message):
        """One frame per event-loop turn: tornado waits for this before reading the next
        frame, so a client's burst cannot stall other clients (or grow buffers here)."""
        self.connection.handle_incoming_message(ws_message)
        await asyncio.sleep(0)


class APIVersionHandler(APIHandler):
    """``GET /api``: versions (no auth, like Jupyter Server's)."""

    auth_resource = "api"

    @allow_unauthenticated
    def get(self):
        self.finish(
            {"version": jupyter_server.__version__, "gateway": "kcr-gateway", "kcr": __version__}
        )


class PoolsHandler(APIHandler):
    """``GET /api/kcr/pools``: per-language pool levels."""

    auth_resource = "kernels"

    @web.authenticated
    @authorized
    def get(self):
        self.finish(self.settings["kcr_pool"].status())


class HealthHandler(APIHandler):
    """``GET /healthz``: the process is alive (liveness probe; no auth)."""

    @allow_unauthenticated
    def get(self):
        self.finish({"status": "ok"})


class ReadyHandler(APIHandler):
    """``GET /readyz``: 503 until every pool has filled once after start-up, then 200.

    A pool that runs low later does not make the gateway unready: kernels
    then cold-start, which is slower but works.
    """

    @allow_unauthenticated
    def get(self):
        status = self.settings["kcr_pool"].status()
        if not self.settings["kcr_app"].ready_once:
            waiting = [lang for lang, s in status.items() if s.get("warm", 0) < s.get("target", 0)]
            self.set_status(503)
            self.finish({"status": "starting", "waiting_for": waiting, "pools": status})
            return
        self.finish({"status": "ready", "pools": status})


class MetricsHandler(APIHandler):
    """``GET /metrics``: Prometheus exposition (auth unless ``authenticate_prometheus`` is off)."""

    @allow_unauthenticated
    async def get(self):
        if self.settings.get("authenticate_prometheus", True):
            user = await ensure_async(self.identity_provider.get_user(self))
            if user is None:
                raise web.HTTPError(403, "Metrics need the gateway token")
        pool = self.settings["kcr_pool"]
        for language, levels in pool.status().items():
            for state in ("warm", "leased", "starting"):
                metrics.POOL_PODS.labels(language=language, state=state).set(levels.get(state, 0))
        metrics.KERNELS.set(len(self.kernel_manager))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


class KernelSpecResourceHandler(JSONErrors, ksr_handlers.KernelSpecResourceHandler):
    """``GET /kernelspecs/{name}/{path}`` (logos): jupyter_server's, with API-style errors.

    Without a valid token it answers 403 like every other endpoint (jupyter_server's
    would try to redirect to a login page this server does not have, a 500); every error
    (403, 404, 405, a path outside the kernelspec) is JSON ``{"reason", "message"}``,
    never an HTML page or a traceback.
    """

    def get_login_url(self) -> str:
        raise web.HTTPError(403, "This resource needs the gateway token")


class NotFoundHandler(JSONErrors, APIHandler):
    """Every unknown path: a JSON 404."""

    @allow_unauthenticated
    def prepare(self):
        raise web.HTTPError(404, f"No such endpoint: {self.request.path}")


def default_handlers() -> list[tuple]:
    kernel_routes = [
        (r"/api/kernels", KernelsHandler),
        (rf"/api/kernels/{_KERNEL_ID}", kernel_handlers.KernelHandler),
        (
            rf"/api/kernels/{_KERNEL_ID}/(?P<action>restart|interrupt)",
            KernelActionHandler,
        ),
        (rf"/api/kernels/{_KERNEL_ID}/channels", KernelChannelsHandler),
    ]
    return [
        (r"/api/?", APIVersionHandler),
        (r"/api/kernelspecs/?", MainKernelSpecHandler),
        (r"/api/kernelspecs/(?P<kernel_name>[\w\.\-%]+)/?", KernelSpecHandler),
        (r"/kernelspecs/(?P<kernel_name>[\w\.\-%]+)/(?P<path>.*)", KernelSpecResourceHandler),
        *kernel_routes,
        (r"/api/kcr/pools/?", PoolsHandler),
        (r"/healthz/?", HealthHandler),
        (r"/readyz/?", ReadyHandler),
        (r"/metrics/?", MetricsHandler),
    ]

"""``kcr-gateway``: the Jupyter Kernel Gateway API on warm pools of sandboxed pods.

A JupyterApp (traitlets configuration, ``--KCRGateway.<trait>`` on the command
line, ``kcr_gateway_config.py`` in Jupyter's config path) that builds a tornado
application from jupyter_server's handlers, with :class:`KCRKernelManager`
behind them and no ZMQ inside.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.utils import url_path_join
from tornado import httpserver, web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, default

from kcr_kernels.backends.base import PodBackend
from kcr_kernels.kernelspecs import KCRKernelSpecManager
from kcr_kernels.pool import PodPool, PoolConfig
from kcr_kernels.stores import (
    StoreError,
    StoreUnavailable,
    open_file_store,
    open_kernel_store,
)
from kcr_kernels.stores.kernel_store_health import HealthCheckedKernelStore
from kcr_kernels.workspace_sync import WorkspaceSync

from . import __version__, redact
from .code_api import KCRCodeAPI, mount_code_api
from .data_lock import DataDirBusy, DataDirLock, DataDirUnusable
from .files import files_handlers
from .handlers import NotFoundHandler, default_handlers, with_json_errors
from .help_defaults import shown_default
from .identity import KCRIdentityProvider
from .kernels import (
    KCRCheckpointer,
    KCRCuller,
    KCRFileSaver,
    KCRKernelManager,
    KCRLeaseKeeper,
)
from .ownership import KCRAuthorizer
from .token_cli import HashTokenApp
from .websocket import KCRWebsocketConnection


class StartupError(RuntimeError):
    """A problem that stops the gateway from starting; printed as one line."""


aliases = {
    **base_aliases,
    "log-level": "KCRGateway.log_level",
    "ip": "KCRGateway.ip",
    "port": "KCRGateway.port",
    "base-url": "KCRGateway.base_url",
    "data-dir": "KCRGateway.data_dir",
    "backend": "KCRGateway.backend",
    "token-file": "KCRIdentityProvider.token_file",
}
flags = {
    **base_flags,
    "allow-unsandboxed": (
        {"KCRGateway": {"allow_unsandboxed": True}},
        "Run pods without bubblewrap when it is missing (user code is NOT isolated).",
    ),
    "kernel-ownership": (
        {"KCRAuthorizer": {"kernel_ownership": True}},
        "A kernel belongs to the identity that started it; others get 404 (admins: all).",
    ),
}


class KCRGateway(JupyterApp):
    """The gateway application: configuration, pools, kernel manager, HTTP server."""

    name = "kcr-gateway"
    version = __version__
    description = "Jupyter Kernel Gateway compatible server: kernels on warm, sandboxed pods."
    aliases = aliases
    flags = flags
    subcommands = {
        "hash-token": (HashTokenApp, HashTokenApp.description.splitlines()[0]),
    }

    @property
    def classes(self):  # listed by --help-all and --generate-config
        return [
            KCRGateway,
            KCRKernelManager,
            KCRLeaseKeeper,
            KCRCheckpointer,
            KCRCuller,
            KCRFileSaver,
            KCRKernelSpecManager,
            KCRIdentityProvider,
            KCRAuthorizer,
            KCRWebsocketConnection,
            KCRCodeAPI,
        ]

    log_level = shown_default(
        Enum(
            (0, 10, 20, 30, 40, 50, "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"),
            default_value=logging.INFO,
            config=True,
            help="Log level, by value or name (DEBUG, INFO, WARN, ERROR, CRITICAL).",
        ),
        "'INFO'",
    )

    # -- network ---------------------------------------------------------------
    ip = Unicode("127.0.0.1", config=True, help="Interface the gateway listens on.")
    port = Integer(8888, config=True, help="Port the gateway listens on (0: any free port).")
    base_url = Unicode("/", config=True, help="URL prefix of every route.")
    auth_token = shown_default(
        Unicode(
            config=True,
            help="A shared token clients may send (Authorization: token <t> or ?token=); it "
            "is one admin identity (KCRIdentityProvider.token_username). With it, the token "
            "file and JupyterHub all empty, authentication is off.",
        ),
        "$KCR_AUTH_TOKEN, else '' (no shared token)",
    )

    @default("auth_token")
    def _auth_token_default(self) -> str:
        return os.environ.get("KCR_AUTH_TOKEN", "")

    code_api_keys = List(
        Unicode(),
        config=True,
        help="API keys of the code-interpreter API (/v1/exec, x-api-key header), or their "
        "hashes (sha256:<hex>). Default: $KCR_CODE_API_KEYS (comma-separated). Other "
        "options of that API: KCRCodeAPI.",
    )

    @default("code_api_keys")
    def _code_api_keys_default(self) -> list[str]:
        return [k for k in os.environ.get("KCR_CODE_API_KEYS", "").split(",") if k.strip()]

    code_api_keys_file = Unicode(
        "",
        config=True,
        help="A file of code-interpreter API keys, one a line: the key or sha256:<hex>, "
        "optionally followed by rate=N (calls/minute), sessions=N, name=X. Re-read on change.",
    )

    allow_origin = Unicode("", config=True, help="Access-Control-Allow-Origin value ('*' for any).")
    allow_origin_pat = Unicode("", config=True, help="Regex of allowed CORS origins.")
    allow_credentials = Bool(False, config=True, help="Set Access-Control-Allow-Credentials.")
    authenticate_prometheus = Bool(True, config=True, help="Require the token for /metrics.")
    websocket_max_message_size = Integer(
        10 * 1024 * 1024,
        config=True,
        help="Largest WebSocket message a client may send, in bytes; a larger one is closed "
        "with code 1009 before it is read. Other incoming limits: KCRWebsocketConnection.",
    )

    # -- kernels ----------------------------------------------------------------
    list_kernels = Bool(True, config=True, help="Allow GET /api/kernels.")
    max_kernels = Integer(0, config=True, help="Most kernels at once (0: no limit).")
    max_kernels_per_user = Integer(
        0,
        config=True,
        help="Most kernels per user (0: no limit): per identity when authentication is on, "
        "else per KERNEL_USERNAME.",
    )
    env_whitelist = List(
        Unicode(),
        # ipykernel's name for a cell in tracebacks (nbclient sets it; harmless to pass)
        default_value=["IPYKERNEL_CELL_NAME"],
        config=True,
        help="Env names besides KERNEL_* a start request may set.",
    )
    default_kernel_name = Unicode("kcr-python", config=True, help="Kernelspec used by default.")

    # -- pods -------------------------------------------------------------------
    config_file_json = shown_default(
        Unicode(
            config=True,
            help="A JSON file with 'backend', 'pools' and 'kubernetes' settings (the Helm "
            "chart's ConfigMap). Command-line options win over it.",
        ),
        "$KCR_CONFIG_FILE, else '' (none)",
    )

    @default("config_file_json")
    def _config_file_json_default(self) -> str:
        return os.environ.get("KCR_CONFIG_FILE", "")

    def _json_config(self) -> dict:
        if not self.config_file_json:
            return {}
        try:
            return json.loads(Path(self.config_file_json).read_text())
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot read {self.config_file_json}: {e}")

    backend = shown_default(
        Unicode(config=True, help="Pod backend: 'local' or 'kubernetes'."),
        "$KCR_BACKEND, else config_file_json's 'backend', else 'local'",
    )

    @default("backend")
    def _backend_default(self) -> str:
        return os.environ.get("KCR_BACKEND") or self._json_config().get("backend") or "local"

    pools = shown_default(
        Dict(
            config=True,
            help="Pool per language: {language: {'warm': pods kept ready, 'max': most pods "
            "(0: any), 'memory': the memory cap of each kernel, e.g. '2Gi' ('0': none)}}.",
        ),
        "config_file_json's 'pools', else {'python': {'warm': 2}}",
    )

    @default("pools")
    def _pools_default(self) -> dict:
        return self._json_config().get("pools") or {"python": {"warm": 2, "max": 0}}

    memory_limit = Unicode(
        "2Gi",
        config=True,
        help="Memory cap of one kernel, all its processes together (Ki/Mi/Gi or K/M/G "
        "suffixes; '0': none), for languages whose pool sets no 'memory'. Local backend: a "
        "memory cgroup per pod (no swap beyond it); a kernel over it is stopped and its cell "
        "says 'the kernel used more than N of memory and was stopped'. Kubernetes: pools' "
        "'memory' replaces the language's resources.limits.memory.",
    )

    def memory_limits(self) -> tuple[int | None, dict[str, int | None]]:
        """(default cap, {language: cap}) in bytes from memory_limit and the pools."""
        from kcr_kernels.backends.cgroups import parse_memory

        try:
            default = parse_memory(self.memory_limit)
            per_language = {
                language: parse_memory((sizes or {})["memory"])
                for language, sizes in self.pools.items()
                if "memory" in (sizes or {})
            }
        except ValueError as e:
            raise StartupError(f"bad memory setting: {e}")
        return default, per_language

    refill_concurrency = Integer(2, config=True, help="Pods started at once while refilling.")
    pod_start_timeout = Float(30.0, config=True, help="Seconds a pod may take to become ready.")
    allow_unsandboxed = Bool(
        False,
        config=True,
        help="Run local pods without bubblewrap when it is missing. User code is then NOT "
        "isolated from this machine.",
    )
    sandbox_uid = Integer(
        61000,
        allow_none=True,
        config=True,
        help="With the local backend and a gateway running as root: the unprivileged host "
        "uid/gid sandboxed kernels run as and own their workspace files with. None maps the "
        "sandbox to root (without capabilities).",
    )
    data_dir = shown_default(
        Unicode(
            config=True,
            help="Where the embedded default keeps its data: pods' workspaces, kcr.db, files/.",
        ),
        lambda: repr(str(Path(jupyter_data_dir()) / "kcr")),
    )

    @default("data_dir")
    def _data_dir_default(self) -> str:
        return str(Path(jupyter_data_dir()) / "kcr")

    # -- stores -----------------------------------------------------------------
    kernel_store_url = shown_default(
        Unicode(
            config=True,
            help="Kernel registry + state store: redis://host:6379/0 or sqlite:///path/kcr.db.",
        ),
        "$KCR_REGISTRY_URL, else 'sqlite:///<data_dir>/kcr.db'",
    )

    @default("kernel_store_url")
    def _kernel_store_url_default(self) -> str:
        return os.environ.get("KCR_REGISTRY_URL") or f"sqlite:///{Path(self.data_dir) / 'kcr.db'}"

    kernel_store_timeout = Float(
        2.0,
        config=True,
        help="Seconds a kernel-store call on the request path (records, leases) may take; "
        "one that takes longer, or fails to connect, marks the store down: then starts "
        "answer 503 at once and GET /api/kernels lists this gateway's own kernels (header "
        "X-KCR-Registry: unreachable) until a check every kernel_store_probe_interval "
        "seconds succeeds. State blobs keep the store's own timeouts. 0: no bound.",
    )
    kernel_store_probe_interval = Float(
        1.0, config=True, help="Seconds between checks of a kernel store that is down."
    )

    files_url = shown_default(
        Unicode(config=True, help="Kernel file store: s3://bucket/prefix or file:///path."),
        "$KCR_FILES_URL, else 'file://<data_dir>/files'",
    )

    @default("files_url")
    def _files_url_default(self) -> str:
        return os.environ.get("KCR_FILES_URL") or f"file://{Path(self.data_dir) / 'files'}"

    s3_endpoint_url = shown_default(
        Unicode(config=True, help="S3 endpoint (MinIO, Ceph RGW, moto)."),
        "boto3's ($AWS_ENDPOINT_URL, else AWS)",
    )
    s3_region = shown_default(
        Unicode(config=True, help="S3 region."), "boto3's ($AWS_DEFAULT_REGION)"
    )
    s3_create_bucket = Bool(False, config=True, help="Create the S3 bucket when it is missing.")
    max_file_bytes = Integer(
        1024**3, config=True, help="Largest single kernel file stored (0: no limit)."
    )
    max_kernel_bytes = Integer(
        4 * 1024**3, config=True, help="Most bytes of files one kernel may store (0: no limit)."
    )
    max_kernel_files = Integer(
        20_000, config=True, help="Most files one kernel may store (0: no limit)."
    )

    state_ttl = Float(
        30 * 24 * 3600.0, config=True, help="Seconds a saved kernel state is kept (0: forever)."
    )
    max_state_bytes = Integer(
        512 * 1024 * 1024, config=True, help="Largest kernel state the store accepts."
    )

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ready_once = False
        self.http_server: httpserver.HTTPServer | None = None
        self.pool: PodPool | None = None
        self.kernel_manager: KCRKernelManager | None = None
        self.code_api = None
        self.data_lock: DataDirLock | None = None
        self._sockets: list | None = None

    # -- construction -------------------------------------------------------------

    def make_backend(self) -> PodBackend:
        if self.backend == "local":
            from kcr_kernels.backends.local import LocalBackend

            memory_limit, memory_limits = self.memory_limits()
            backend = LocalBackend(
                Path(self.data_dir),
                sandbox=True,
                log=self.log,
                memory_limit=memory_limit,
                memory_limits=memory_limits,
                sandbox_uid=self.sandbox_uid,
            )
            if self.allow_unsandboxed:
                from kcr_kernels.backends.sandbox import SandboxUnavailable

                try:
                    backend.sandbox.check()
                except SandboxUnavailable as e:
                    self.log.warning(
                        "No sandbox (%s); allow_unsandboxed is set, so pods run without one", e
                    )
                    backend.sandboxed = False
            return backend
        if self.backend == "kubernetes":
            from kcr_kernels.backends.k8s_pod_spec import KubernetesConfig
            from kcr_kernels.backends.kubernetes import KubernetesBackend

            settings = self._json_config().get("kubernetes")
            if not settings:
                raise StartupError(
                    "the kubernetes backend needs its settings: set KCR_CONFIG_FILE "
                    "(the Helm chart does) or --KCRGateway.config_file_json"
                )
            try:
                config = KubernetesConfig.from_dict(settings)
            except (TypeError, ValueError) as e:
                raise StartupError(f"bad kubernetes settings in {self.config_file_json}: {e}")
            self.memory_limits()  # a bad size fails the start, not every pod creation
            for language, sizes in self.pools.items():
                memory = (sizes or {}).get("memory")
                if memory is not None and language in config.languages:
                    config.languages[language].memory = str(memory)
            api_client = None
            if config.api_server:  # e.g. kubectl proxy: no credentials, plain URL
                from kubernetes import client

                api_config = client.Configuration()
                api_config.host = config.api_server.rstrip("/")
                api_client = client.ApiClient(api_config)
            return KubernetesBackend(config, api_client=api_client)
        raise StartupError(f"unknown backend {self.backend!r}: use 'local' or 'kubernetes'")

    def pool_configs(self) -> list[PoolConfig]:
        configs = []
        for language, sizes in self.pools.items():
            sizes = sizes or {}
            configs.append(
                PoolConfig(language, warm=int(sizes.get("warm", 2)), max=int(sizes.get("max", 0)))
            )
        if not configs:
            raise StartupError("no pools configured: set KCRGateway.pools")
        return configs

    def known_languages(self) -> list[str]:
        """The languages the configured backend can run (local: the runner's table;
        kubernetes: the languages of its settings)."""
        if self.backend == "kubernetes":
            return sorted(self.backend_impl.config.languages)
        from kcr_runner.languages import LANGUAGES

        return sorted(LANGUAGES)

    def check_pool_languages(self, configs: list[PoolConfig]) -> None:
        """A pool for a language the backend cannot run stops the start-up (one line)."""
        known = self.known_languages()
        unknown = [c.language for c in configs if c.language not in known]
        if unknown:
            raise StartupError(
                f"KCRGateway.pools names unknown language(s) {', '.join(map(repr, unknown))}; "
                f"known languages: {', '.join(known) or 'none'}"
            )

    def init_components(self) -> None:
        configs = self.pool_configs()
        self.backend_impl = self.make_backend()
        self.check_pool_languages(configs)

        async def registered_kernel_ids() -> set[str]:
            # Kernels in the registry (all replicas): the pool's reaper keeps their pods.
            return {r["id"] for r in await self.kernel_store.list_kernels() if "id" in r}

        shared_options = {}
        if self.backend == "kubernetes":
            shared_options["reap_interval"] = self.backend_impl.config.reap_interval
        self.pool = PodPool(
            self.backend_impl,
            configs,
            start_timeout=self.pod_start_timeout,
            refill_concurrency=self.refill_concurrency,
            log=self.log,
            live_kernels=registered_kernel_ids,
            **shared_options,
        )
        self.kernel_spec_manager = KCRKernelSpecManager(
            parent=self, languages=[c.language for c in configs]
        )
        try:
            self.kernel_store = open_kernel_store(
                self.kernel_store_url,
                state_ttl=self.state_ttl or None,
                max_state_bytes=self.max_state_bytes or None,
            )
        except StoreError as e:
            raise StartupError(f"bad kernel_store_url: {e}")
        self.kernel_store = HealthCheckedKernelStore(
            self.kernel_store,
            call_timeout=self.kernel_store_timeout or None,
            probe_interval=self.kernel_store_probe_interval,
            probe_timeout=self.kernel_store_timeout or 1.0,
            log=self.log,
        )
        try:
            file_store = open_file_store(
                self.files_url,
                endpoint_url=self.s3_endpoint_url or None,
                region=self.s3_region or None,
                create_bucket=self.s3_create_bucket,
            )
        except StoreError as e:
            raise StartupError(f"bad files_url: {e}")
        self.workspace_sync = WorkspaceSync(
            file_store,
            max_file_bytes=self.max_file_bytes or None,
            max_kernel_bytes=self.max_kernel_bytes or None,
            max_kernel_files=self.max_kernel_files or None,
            log=self.log,
        )
        self.kernel_manager = KCRKernelManager(
            files=self.workspace_sync,
            parent=self,
            log=self.log,
            pool=self.pool,
            store=self.kernel_store,
            kernel_spec_manager=self.kernel_spec_manager,
        )
        self.pool.prepare = self.kernel_manager.prepare_pod
        self.identity_provider = KCRIdentityProvider(
            parent=self, log=self.log, token=self.auth_token
        )
        self.authorizer = KCRAuthorizer(
            parent=self, log=self.log, identity_provider=self.identity_provider
        )
        try:
            self.code_api = mount_code_api(self, [c.language for c in configs])
        except (OSError, ValueError) as e:
            raise StartupError(f"code API: {e}")
        if self.authorizer.kernel_ownership and not self.identity_provider.auth_enabled:
            raise StartupError(
                "kernel_ownership needs identities: set an auth token, a token file "
                "(--token-file) or JupyterHub (JUPYTERHUB_API_URL)"
            )

    def make_web_app(self) -> web.Application:
        routes = self.code_api.handlers() if self.code_api is not None else []
        handlers = [
            (url_path_join(self.base_url, pattern), *rest)
            for pattern, *rest in routes + with_json_errors(default_handlers() + files_handlers())
        ]
        import jupyter_server
        from jinja2 import Environment, FileSystemLoader

        templates = Path(jupyter_server.__file__).parent / "templates"
        settings = dict(
            base_url=self.base_url,
            # jupyter_server renders its error page for failed WebSocket upgrades.
            jinja2_env=Environment(loader=FileSystemLoader(str(templates)), autoescape=True),
            kernel_manager=self.kernel_manager,
            kernel_spec_manager=self.kernel_spec_manager,
            kernel_websocket_connection_class=KCRWebsocketConnection,
            identity_provider=self.identity_provider,
            authorizer=self.authorizer,
            allow_origin=self.allow_origin,
            allow_origin_pat=self.allow_origin_pat,
            allow_credentials=self.allow_credentials,
            allow_remote_access=True,
            disable_check_xsrf=True,
            cookie_secret=os.urandom(32),
            authenticate_prometheus=self.authenticate_prometheus,
            # Keep-alive pings of kernel WebSockets, by jupyter_server's WebSocketMixin (ms);
            # a client that answers none for 3 intervals is closed.
            ws_ping_interval=30_000,
            websocket_max_message_size=self.websocket_max_message_size,
            config=self.config,  # KCRWebsocketConnection's limits
            kcr_app=self,
            kcr_pool=self.pool,
            kcr_workspace_sync=self.workspace_sync,
            kcr_list_kernels=self.list_kernels,
            kcr_max_kernels=self.max_kernels,
            kcr_max_kernels_per_user=self.max_kernels_per_user,
            kcr_env_whitelist=list(self.env_whitelist),
            default_handler_class=NotFoundHandler,
            serverapp=None,
        )
        return web.Application(handlers, **settings)

    # -- running --------------------------------------------------------------

    async def start_async(self) -> None:
        """Start pools, kernel manager and HTTP server; returns once listening."""
        # Large enough for a kernel's whole state in one response (tornado's default: 100 MiB).
        AsyncHTTPClient.configure(
            None, max_clients=1024, max_body_size=self.max_state_bytes + (64 << 20)
        )
        redact.install()
        redact.add_secret(self.auth_token)
        # Nothing is touched before the port is ours and the data folder is locked: a
        # second gateway (same port, or same data folder) stops here with one line and
        # leaves the first one's pods, kernels and files alone.
        self._sockets = self._listen()
        self.lock_data_dir()
        self.init_components()
        # Not needed to check user tokens (the Hub answers /user with the caller's token),
        # but present in a Hub service's environment: never logged.
        redact.add_secret(os.environ.get("JUPYTERHUB_API_TOKEN", ""))
        try:
            self.identity_provider.start()
        except OSError as e:
            raise StartupError(
                f"cannot read the token file {self.identity_provider.token_file}: {e.strerror or e}"
            )
        try:  # the store itself, not its health flag: a start-up failure is one line
            await self.kernel_store.inner.ping()
        except StoreError as e:
            if isinstance(e, StoreUnavailable):
                raise StartupError(f"the kernel store is unreachable: {e}")
            raise StartupError(f"the kernel store does not work: {e}")
        await self._check_file_store()
        await self.kernel_manager.load_registry_view()
        await self.pool.start()
        self.identity_provider.validate_security(self)
        app = self.make_web_app()
        self.http_server = httpserver.HTTPServer(app, max_body_size=1 << 30, xheaders=False)
        sockets, self._sockets = self._sockets, None
        self.http_server.add_sockets(sockets)
        self.kernel_manager.start_background()
        if self.code_api is not None:
            self.code_api.start()
        self._ready_task = asyncio.create_task(self._become_ready())
        self.log.info("kcr-gateway %s listening on %s", __version__, self.display_url)

    async def _check_file_store(self) -> None:
        """A file store that answers but cannot work is a start-up error; one that does not
        answer yet is a warning (kernels keep their files in their pods until it does)."""
        try:
            await self.workspace_sync.store.ping()
        except StoreUnavailable as e:
            self.log.warning("The file store does not answer yet (files are kept in pods): %s", e)
        except StoreError as e:
            raise StartupError(f"bad files_url: {e}")

    async def _become_ready(self) -> None:
        """Mark the gateway ready (``/readyz``) once every pool has filled."""
        while True:
            try:
                await self.pool.wait_warm(3600)
                break
            except TimeoutError:
                continue
        self.ready_once = True
        self.log.info("All pools are warm: the gateway is ready")

    async def _bounded(self, step, what: str, seconds: float = 60.0) -> None:
        """One shutdown step; a step that hangs is logged and left, never waited for forever."""
        try:
            await asyncio.wait_for(step, seconds)
        except TimeoutError:
            self.log.error("Shutdown: %s took longer than %ss; going on", what, seconds)

    def _bind(self):
        from tornado.netutil import bind_sockets

        return bind_sockets(self.port, self.ip)

    def _listen(self) -> list:
        """Bind the listening sockets (connections wait in the backlog until the server
        accepts them); a port in use is a :class:`StartupError`."""
        try:
            sockets = self._bind()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {self.port} on {self.ip} is already in use: pick another with --port"
                )
            raise StartupError(f"cannot listen on {self.ip}:{self.port}: {e.strerror or e}")
        self.port = sockets[0].getsockname()[1]
        return sockets

    def lock_data_dir(self) -> None:
        """Hold the data folder's lock (:mod:`.data_lock`) for this gateway's life."""
        lock = DataDirLock(self.data_dir)
        try:
            lock.acquire()
        except (DataDirBusy, DataDirUnusable) as e:
            raise StartupError(str(e))
        self.data_lock = lock

    @property
    def display_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{self.base_url}"

    async def stop_async(self) -> None:
        """Stop serving; hibernate kernels (they stay in the registry) and delete every pod."""
        if self.http_server is not None:
            self.http_server.stop()
        if getattr(self, "identity_provider", None) is not None:
            await self.identity_provider.stop()
        if getattr(self, "_ready_task", None) is not None:
            self._ready_task.cancel()
        if getattr(self, "code_api", None) is not None:
            await self.code_api.stop()
        if self.kernel_manager is not None:
            self.kernel_manager.stop_background()
            await self._bounded(self.kernel_manager.detach_all(), "hibernating kernels")
        if self.pool is not None:
            await self._bounded(self.pool.stop(), "deleting pods")
        if getattr(self, "backend_impl", None) is not None:
            await self._bounded(self.backend_impl.close(), "closing the backend")
        if getattr(self, "kernel_store", None) is not None:
            await self.kernel_store.close()
        if getattr(self, "workspace_sync", None) is not None:
            await self.workspace_sync.store.close()
        for sock in self._sockets or []:  # bound, but the start-up failed before serving
            sock.close()
        self._sockets = None
        if self.data_lock is not None:
            self.data_lock.release()
            self.data_lock = None

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        super().start()
        asyncio.run(self._main())

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start_async()
        except Exception as e:
            await self.stop_async()
            raise StartupError(str(e)) from e
        await stop.wait()
        self.log.info("Shutting down: hibernating kernels and deleting pods")
        await self.stop_async()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``kcr-gateway``: configuration errors are one line, not a traceback."""
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    app = KCRGateway()
    try:
        app.initialize(argv)
        app.start()
    except StartupError as e:
        print(f"kcr-gateway: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

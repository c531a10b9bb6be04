"""``kcr-provisioner``: jupyter_client kernel provisioner for kcr kernels.

Registered in the ``jupyter_client.kernel_provisioners`` entry-point group and
named by the ``kcr-*`` kernelspecs::

    "metadata": {"kernel_provisioner": {"provisioner_name": "kcr-provisioner",
                                        "config": {"gateway_url": "http://gw:8888"}}}

It launches the local bridge kernel (:mod:`kcr_kernels.bridge`) that serves the
kernel over ZMQ. With a gateway (``gateway_url`` in the config, or
``$KCR_GATEWAY_URL``) the provisioner first creates the kernel on the gateway
(``POST /api/kernels`` with the ``KERNEL_*`` environment), so a refused start
(unknown kernelspec, pool exhausted, bad token) fails ``start_kernel`` with the
gateway's reason, and hands its id to the bridge. Without a gateway the bridge
runs a sandboxed local runner of its own.

Forked and spawned processes: nbclient and papermill users run notebooks
from ``multiprocessing`` workers, often forked from a process that already
ran one. The provisioner keeps no module-level thread, loop or client: its
gateway calls go through a :class:`~kcr_kernels.bridge.gateway_api.GatewayAPI`
made per provisioner (its HTTP client is created per process and event loop),
and its one blocking job (removing a local pod's folder) runs in
:mod:`kcr_kernels.forksafe`'s per-process threads, never in asyncio's default
executor (a forked child inherits that executor's state but not its threads,
and would wait for them forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Float, Unicode, default

from .bridge.args import kernel_env
from .bridge.gateway_api import GatewayAPI, GatewayError
from .forksafe import run_in_thread


class KCRProvisioner(LocalProvisioner):
    """Provisions kcr kernels: a local bridge process in front of a gateway or local pod.

    Built on jupyter_client's ``LocalProvisioner`` (itself a
    ``KernelProvisionerBase``), which already writes the connection file and
    manages a local process; this class adds the remote kernel around it.

    Contract:

    * :meth:`launch_kernel` creates the gateway kernel (gateway mode) and
      starts ``python -m kcr_kernels.bridge``; the returned connection info is
      the bridge's.
    * :meth:`poll` only checks the bridge process (no network call).
    * :meth:`send_signal` signals the bridge: SIGINT interrupts the remote
      cell, SIGTERM shuts the kernel down, SIGKILL kills the bridge (the
      remote kernel is then deleted by :meth:`cleanup`).
    * :meth:`cleanup` deletes the gateway kernel if the bridge could not
      (a 404 is fine) and removes the local pod's folder.
    * :meth:`get_provisioner_info` / :meth:`load_provisioner_info` carry the
      bridge pid, the gateway URL and the remote kernel id, so another
      process (a restarted Jupyter Server) can find, signal and clean up the
      running kernel. The gateway token is not stored: it comes from the
      configuration or ``$KCR_GATEWAY_TOKEN`` again.
    """

    gateway_url = Unicode(
        config=True, help="kcr gateway URL (default $KCR_GATEWAY_URL; empty: local mode)."
    )
    gateway_token = Unicode(config=True, help="Gateway token (default $KCR_GATEWAY_TOKEN).")
    kernel_name = Unicode(
        "", config=True, help="Kernelspec to start on the gateway (default kcr-<language>)."
    )
    language = Unicode("", config=True, help="Kernel language (default from the kernelspec).")
    allow_unsandboxed = Bool(
        config=True,
        help="Local mode: run without bubblewrap when it is unavailable (NOT isolated). "
        "Default: $KCR_ALLOW_UNSANDBOXED.",
    )
    launch_timeout = Float(60.0, config=True, help="Seconds a kernel start may take.")
    memory_limit = Unicode(
        config=True,
        help="Local mode: memory cap of the kernel, all its processes together (a memory "
        "cgroup; like 2Gi or 512Mi; 0: none). Default: $KCR_MEMORY_LIMIT, else 2Gi.",
    )
    shutdown_wait_time = Float(
        10.0, config=True, help="Seconds a graceful shutdown may take (remote kernel included)."
    )
    stable_start_time = Float(
        30.0, config=True, help="Upper bound of a (re)start, pod cold start included."
    )

    @default("gateway_url")
    def _gateway_url_default(self) -> str:
        return os.environ.get("KCR_GATEWAY_URL", "")

    @default("gateway_token")
    def _gateway_token_default(self) -> str:
        return os.environ.get("KCR_GATEWAY_TOKEN", "")

    @default("memory_limit")
    def _memory_limit_default(self) -> str:
        return os.environ.get("KCR_MEMORY_LIMIT", "2Gi")

    @default("allow_unsandboxed")
    def _allow_unsandboxed_default(self) -> bool:
        return os.environ.get("KCR_ALLOW_UNSANDBOXED", "") not in ("", "0", "false")

    remote_kernel_id: str | None = None
    data_dir: str | None = None
    _gateway_api: GatewayAPI | None = None

    # -- helpers -------------------------------------------------------------------

    def _language(self) -> str:
        if self.language:
            return self.language
        spec = self.kernel_spec
        kcr = (spec.metadata or {}).get("kcr", {}) if spec is not None else {}
        return kcr.get("language") or (spec.language if spec is not None else "") or "python"

    def _gateway(self) -> str:
        return self.gateway_url.rstrip("/")

    def _api(self) -> GatewayAPI:
        api = self._gateway_api
        if api is None or api.url != self._gateway() or api.token != self.gateway_token:
            api = self._gateway_api = GatewayAPI(self._gateway(), self.gateway_token, timeout=10.0)
        return api

    async def _create_remote_kernel(self, env: dict[str, str]) -> str:
        name = self.kernel_name or f"kcr-{self._language()}"
        return await self._api().create_kernel(name, kernel_env(env), self.launch_timeout)

    async def _delete_remote_kernel(self) -> None:
        if not (self.remote_kernel_id and self.gateway_url):
            return
        try:
            await self._api().delete_kernel(self.remote_kernel_id)
        except GatewayError as e:
            self.log.warning("kcr: could not delete kernel %s: %s", self.remote_kernel_id, e)
        self.remote_kernel_id = None

    # -- launch --------------------------------------------------------------------

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = dict(kwargs.get("env") or os.environ)
        # The notebook's folder (jupyter_client's cwd): local mode binds it as the sandbox's
        # working folder, gateway mode syncs it with the kernel's (kcr_kernels.bridge).
        if kwargs.get("cwd") and not env.get("KERNEL_WORKING_DIR"):
            env["KERNEL_WORKING_DIR"] = os.path.abspath(kwargs["cwd"])  # noqa: ASYNC240
        extra = ["--language", self._language()]
        if self.gateway_url:
            try:
                self.remote_kernel_id = await self._create_remote_kernel(env)
            except GatewayError as e:
                raise RuntimeError(f"kcr: the gateway did not start the kernel: {e}") from e
            extra += ["--gateway-url", self._gateway(), "--kernel-id", self.remote_kernel_id]
            if self.gateway_token:
                env["KCR_GATEWAY_TOKEN"] = self.gateway_token
        else:
            env.pop("KCR_GATEWAY_URL", None)
            self.data_dir = tempfile.mkdtemp(prefix="kcr-kernel-")
            extra += ["--data-dir", self.data_dir, "--start-timeout", str(self.launch_timeout)]
            extra += ["--memory-limit", self.memory_limit]
            if self.allow_unsandboxed:
                extra.append("--allow-unsandboxed")
        kwargs["env"] = env
        try:
            return await super().launch_kernel([*cmd, *extra], **kwargs)
        except Exception:
            await self._delete_remote_kernel()
            raise

    # -- process -------------------------------------------------------------------

    def _pid_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # An exited process its (other) parent has not reaped yet is a zombie: gone.
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            return True  # no /proc (not Linux): trust kill(0)

    @property
    def has_process(self) -> bool:
        return self.process is not None or (self.pid is not None and self._pid_alive())

    async def poll(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        if self.pid is not None and self._pid_alive():
            return None  # a bridge found again through load_provisioner_info
        return 0

    async def wait(self) -> int | None:
        if self.process is not None:
            return await super().wait()
        # Not our child (found again through load_provisioner_info): no exit
        # status to wait on, so poll the pid like LocalProvisioner polls Popen.
        while await self.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.pid = None
        return 0

    async def send_signal(self, signum: int) -> None:
        # Only the bridge: it turns SIGINT into an interrupt of the remote cell.
        if self.process is not None:
            self.process.send_signal(signum)
        elif self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def kill(self, restart: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        await self._delete_remote_kernel()
        if self._gateway_api is not None:
            self._gateway_api.close()
            self._gateway_api = None
        if self.data_dir:
            await run_in_thread(shutil.rmtree, self.data_dir, True)
            self.data_dir = None

    # -- persistence ---------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            gateway_url=self._gateway(),
            remote_kernel_id=self.remote_kernel_id,
            data_dir=self.data_dir,
            language=self._language(),
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        if provisioner_info.get("gateway_url"):
            self.gateway_url = provisioner_info["gateway_url"]
        self.remote_kernel_id = provisioner_info.get("remote_kernel_id")
        self.data_dir = provisioner_info.get("data_dir")
        if provisioner_info.get("language"):
            self.language = provisioner_info["language"]

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, self.shutdown_wait_time)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.stable_start_time)

"""``kcr-kernels lab``: JupyterLab whose kernels run on a kcr gateway.

It runs ``jupyter lab`` (from this environment) with ``--gateway-url`` pointing at the
gateway, the gateway token wired into ``GatewayClient.auth_token`` (from ``--token``,
else ``$KCR_AUTH_TOKEN``, else ``$KCR_GATEWAY_TOKEN``; never put on the command line of
the Jupyter Server process), ``--allow-root`` when run as root, a port next to the
gateway's and the work-arounds below. Other arguments go to ``jupyter lab`` unchanged.

Work-arounds for Jupyter Server in gateway mode (jupyter_server 2.x):

* ``GET /api/resolvePath?kernel=<id>`` (JupyterLab asks it to link file names in
  tracebacks and outputs) fails with a 500 and ``AssertionError: self.provisioner is not
  None``: jupyter_client's ``KernelManager.resolve_path`` asks a provisioner that a gateway
  kernel does not have. :class:`GatewayKernelManager` answers "not resolvable on this
  server" instead (the kernel's files live in its pod, not next to Jupyter Server).
* At the first WebSocket, tornado warns "The websocket_ping_timeout (90000) cannot be
  longer than the websocket_ping_interval (30000)": jupyter_server's ``WebSocketMixin``
  gives tornado its ping settings in milliseconds, which tornado reads as seconds. The
  mixin does the pinging itself, so the warning says nothing; importing this module
  (Jupyter Server does, for the kernel manager class) filters that one line out.
"""

from __future__ import annotations

import logging
import os
import sys

from jupyter_server.gateway.managers import GatewayKernelManager as _GatewayKernelManager


class _PingUnitsWarning(logging.Filter):
    """Drops tornado's websocket_ping_timeout warning caused by jupyter_server's units."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "cannot be longer than the websocket_ping_interval" not in record.getMessage()


logging.getLogger("tornado.general").addFilter(_PingUnitsWarning())

DEFAULT_GATEWAY = "http://127.0.0.1:8888"
DEFAULT_PORT = 8889


class GatewayKernelManager(_GatewayKernelManager):
    """Jupyter Server's gateway kernel manager, with ``resolve_path`` answering ``None``
    (the path is not a file of this server) instead of failing on a missing provisioner."""

    def resolve_path(self, path: str) -> str | None:
        return None


def _given(args: list[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def lab_command(gateway_url: str, extra: list[str], *, as_root: bool) -> list[str]:
    """The ``jupyter lab`` command line (without the token: it goes in the environment)."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--gateway-url={gateway_url.rstrip('/')}",
        "--GatewayMappingKernelManager.kernel_manager_class="
        f"{GatewayKernelManager.__module__}.{GatewayKernelManager.__name__}",
    ]
    if not _given(extra, "--port", "--ServerApp.port"):
        command.append(f"--port={DEFAULT_PORT}")
    if as_root and not _given(extra, "--allow-root", "--ServerApp.allow_root"):
        command.append("--allow-root")
    return command + extra


def run_lab(gateway_url: str, token: str | None, extra: list[str]) -> int:
    """Replace this process with JupyterLab on ``gateway_url``; 1 if it is not installed."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        print(
            "kcr-kernels: error: JupyterLab is not installed in this environment "
            f"({sys.prefix}): pip install 'kcr-kernels[lab]' (or use `hatch run lab`)",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    if token is None:
        token = env.get("KCR_AUTH_TOKEN") or env.get("KCR_GATEWAY_TOKEN") or ""
    if token:
        env["JUPYTER_GATEWAY_AUTH_TOKEN"] = token  # GatewayClient.auth_token's default
    command = lab_command(gateway_url, extra, as_root=os.geteuid() == 0)
    os.execve(command[0], command, env)  # JupyterLab takes over this process (and Ctrl-C)

"""What the bridge kernel is told: its command line and the environment it passes on.

The kernelspec starts ``python -m kcr_kernels.bridge -f {connection_file}``
and the provisioner adds the bridge's own options (``--gateway-url``,
``--kernel-id``, ``--language``, ``--data-dir``, ...). Jupyter clients also
append the arguments they give *python* kernels (ipykernel), because a
kernelspec named ``python3`` looks like ipykernel to them: nbclient adds
``--HistoryManager.hist_file=:memory:``, others pass ``--Foo.bar=value``,
``--matplotlib=inline``, ``--IPKernelApp.connection_file=PATH`` and so on.

Contract of :func:`parse_args`:

* The bridge's own options are parsed exactly (no abbreviations, so an
  ipykernel flag can never be mistaken for one of ours).
* The connection file may be given as ``-f PATH``, ``--f=PATH``,
  ``--connection-file PATH`` or ``--IPKernelApp.connection_file=PATH``
  (ipykernel's alias).
* Every other argument is accepted and **ignored** (never fatal): the kernel
  runs in a pod that a gateway or the local backend configures, not from the
  client's command line, and a gateway's start request carries no kernel
  arguments. Arguments whose effect kcr kernels already have are ignored
  silently (:data:`ALREADY_SO`); the others are named once on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from ..backends.cgroups import parse_memory

#: Environment passed to the kernel: what a gateway accepts from a start request.
KERNEL_ENV_PREFIX = "KERNEL_"

#: ipykernel arguments whose effect kcr's Python kernel has anyway (the worker keeps its
#: history in memory, its pod is its own); ignored without a warning.
ALREADY_SO = ("--HistoryManager.hist_file=:memory:",)

#: ipykernel's spellings of the connection file option.
CONNECTION_FILE_OPTIONS = ("--f", "--IPKernelApp.connection_file", "--connection_file")


#: ipykernel settings its launchers give through the environment that change what the client
#: sees; passed on like ``KERNEL_*``. nbclient sets ``IPYKERNEL_CELL_NAME`` so that tracebacks
#: name a cell's file the same on every run (ipykernel's ``compiler.get_file_name``).
IPYKERNEL_ENV = ("IPYKERNEL_CELL_NAME",)


def kernel_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The ``KERNEL_*`` variables of ``environ`` and :data:`IPYKERNEL_ENV` (passed on to the
    remote kernel)."""
    return {
        k: v for k, v in environ.items() if k.startswith(KERNEL_ENV_PREFIX) or k in IPYKERNEL_ENV
    }


@dataclass
class BridgeArgs:
    """The parsed command line; ``ignored`` are the client's arguments the bridge dropped."""

    connection_file: str
    gateway_url: str = ""
    kernel_id: str | None = None
    kernel_name: str | None = None
    language: str = "python"
    data_dir: str | None = None
    allow_unsandboxed: bool = False
    start_timeout: float = 30.0
    memory_limit: str = "2Gi"
    reconnect_timeout: float = 60.0
    log_level: str = "WARNING"
    ignored: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kcr_kernels.bridge",
        description="Serve a kcr kernel to jupyter_client over ZMQ. Arguments meant for "
        "ipykernel (--Foo.bar=..., --matplotlib=...) are accepted and ignored.",
        allow_abbrev=False,
    )
    parser.add_argument("-f", "--connection-file", help="Jupyter connection file")
    parser.add_argument(
        "--gateway-url",
        default=os.environ.get("KCR_GATEWAY_URL", ""),
        help="kcr gateway to relay to (default $KCR_GATEWAY_URL; empty: local mode)",
    )
    parser.add_argument("--kernel-id", default=None, help="attach to this gateway kernel")
    parser.add_argument(
        "--kernel-name", default=None, help="gateway kernelspec (default kcr-<language>)"
    )
    parser.add_argument("--language", default="python", help="kernel language (local mode)")
    parser.add_argument("--data-dir", default=None, help="local mode: where the pod lives")
    parser.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        default=os.environ.get("KCR_ALLOW_UNSANDBOXED", "") not in ("", "0", "false"),
        help="local mode: run without bubblewrap when it is unavailable (NOT isolated)",
    )
    parser.add_argument("--start-timeout", type=float, default=30.0)
    parser.add_argument(
        "--memory-limit",
        default=os.environ.get("KCR_MEMORY_LIMIT", "2Gi"),
        help="local mode: memory cap of the kernel, all its processes together, in a memory "
        "cgroup (like 2Gi or 512Mi; 0: none; default $KCR_MEMORY_LIMIT or 2Gi)",
    )
    parser.add_argument("--reconnect-timeout", type=float, default=60.0)
    parser.add_argument("--log-level", default=os.environ.get("KCR_BRIDGE_LOG_LEVEL", "WARNING"))
    return parser


def parse_args(argv: list[str] | None = None) -> BridgeArgs:
    """Parse the bridge's command line; see the module docstring. Exits 2 without a
    connection file (argparse's usage error)."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    known, unknown = parser.parse_known_args(argv)
    ignored: list[str] = []
    connection_file = known.connection_file
    for arg in unknown:
        name, eq, value = arg.partition("=")
        if eq and name in CONNECTION_FILE_OPTIONS:
            connection_file = connection_file or value
        else:
            ignored.append(arg)
    if not connection_file:
        parser.error("a connection file is required (-f CONNECTION_FILE)")
    try:
        parse_memory(known.memory_limit)
    except ValueError as e:
        parser.error(f"--memory-limit: {e}")
    values = {k: v for k, v in vars(known).items() if k != "connection_file"}
    return BridgeArgs(connection_file=connection_file, ignored=ignored, **values)


def warn_ignored(args: BridgeArgs, stream=None) -> None:
    """Name the ignored arguments once on ``stream`` (stderr), except :data:`ALREADY_SO`."""
    noted = [a for a in args.ignored if a not in ALREADY_SO]
    if noted:
        print(
            "[kcr] ignoring kernel arguments kcr kernels do not take: " + " ".join(noted),
            file=stream or sys.stderr,
        )

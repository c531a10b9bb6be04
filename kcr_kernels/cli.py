"""``kcr-kernels``: command-line tools around kcr's kernelspecs.

``kcr-kernels install-kernelspecs [--user | --sys-prefix | --prefix DIR]
[--gateway-url URL] [--allow-unsandboxed] [--name kcr-python ...]`` installs the
packaged ``kcr-*`` kernelspecs with jupyter_client's ``KernelSpecManager``
(so ``jupyter kernelspec list`` shows them). The installed ``kernel.json``
runs the bridge with this Python (an absolute path, so the kernel works from
any environment) and, with ``--gateway-url``, names the gateway in the
provisioner config. The gateway token is never written to disk: set
``KCR_GATEWAY_TOKEN`` where the kernel is started.

With ``--as-default`` it also installs ``kcr-python`` under the name ``python3``, the
name notebooks written for stock kernels ask for (and jupyter_client's default), so
``jupyter execute``, nbclient and papermill run them on kcr without a kernel option.

``kcr-kernels list-kernelspecs`` prints the packaged kernelspecs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from .kernelspecs import DEFAULT_ALIASES, PREFIX, kernelspecs_dir


def packaged_specs() -> dict[str, Path]:
    """Name → folder of every packaged ``kcr-*`` kernelspec."""
    root = kernelspecs_dir()
    return {
        d.name: d
        for d in sorted(root.iterdir())
        if d.name.startswith(PREFIX) and (d / "kernel.json").is_file()
    }


def prepared_spec(source: Path, target: Path, gateway_url: str, allow_unsandboxed: bool) -> None:
    """Copy ``source`` to ``target`` with argv and provisioner config filled in."""
    shutil.copytree(source, target)
    spec_file = target / "kernel.json"
    spec = json.loads(spec_file.read_text())
    argv = list(spec.get("argv") or [])
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    spec["argv"] = argv
    provisioner = spec.setdefault("metadata", {}).setdefault(
        "kernel_provisioner", {"provisioner_name": "kcr-provisioner"}
    )
    config = provisioner.setdefault("config", {})
    if gateway_url:
        config["gateway_url"] = gateway_url.rstrip("/")
    if allow_unsandboxed:
        config["allow_unsandboxed"] = True
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")


def install_kernelspecs(
    *,
    user: bool = False,
    prefix: str | None = None,
    gateway_url: str = "",
    allow_unsandboxed: bool = False,
    names: list[str] | None = None,
    as_default: bool = False,
) -> dict[str, str]:
    """Install the packaged kernelspecs; returns name → installed folder.

    ``user`` installs for the current user, ``prefix`` under
    ``PREFIX/share/jupyter/kernels``; neither means the system-wide folder.
    Unknown ``names`` raise :class:`KeyError` naming the ones that exist. ``as_default``
    also installs each aliased spec under its alias (``kcr-python`` as ``python3``).
    """
    specs = packaged_specs()
    wanted = names or list(specs)
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise KeyError(
            f"no packaged kernelspec {', '.join(unknown)} (available: {', '.join(specs)})"
        )
    manager = KernelSpecManager()
    installed = {}
    with tempfile.TemporaryDirectory(prefix="kcr-specs-") as tmp:
        for name in wanted:
            staged = Path(tmp) / name
            prepared_spec(specs[name], staged, gateway_url, allow_unsandboxed)
            installed[name] = manager.install_kernel_spec(
                str(staged), kernel_name=name, user=user, prefix=prefix
            )
        for alias, target in DEFAULT_ALIASES.items() if as_default else ():
            if target not in specs:
                continue
            staged = Path(tmp) / alias
            prepared_spec(specs[target], staged, gateway_url, allow_unsandboxed)
            installed[alias] = manager.install_kernel_spec(
                str(staged), kernel_name=alias, user=user, prefix=prefix
            )
    return installed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcr-kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser(
        "install-kernelspecs", help="install the kcr-* kernelspecs for jupyter_client"
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument(
        "--sys-prefix", action="store_true", help=f"install into {sys.prefix} (this environment)"
    )
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels")
    install.add_argument(
        "--gateway-url", default="", help="kcr gateway the kernels run on (default: local mode)"
    )
    install.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="local mode: run kernels without bubblewrap when it is unavailable (NOT isolated)",
    )
    install.add_argument(
        "--name", action="append", dest="names", help="only this kernelspec (repeatable)"
    )
    install.add_argument(
        "--as-default",
        action="store_true",
        help="also install kcr-python as 'python3' (stock notebooks and jupyter_client's "
        "default kernel then run on kcr)",
    )
    sub.add_parser("list-kernelspecs", help="list the packaged kcr-* kernelspecs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "list-kernelspecs":
        for name, folder in packaged_specs().items():
            print(f"{name}\t{folder}")
        return
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        installed = install_kernelspecs(
            user=args.user,
            prefix=prefix,
            gateway_url=args.gateway_url,
            allow_unsandboxed=args.allow_unsandboxed,
            names=args.names,
            as_default=args.as_default,
        )
    except KeyError as e:
        print(f"kcr-kernels: error: {e.args[0]}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as e:
        print(
            f"kcr-kernels: error: cannot write {e.filename}: use --user or --sys-prefix",
            file=sys.stderr,
        )
        sys.exit(1)
    mode = f"gateway {args.gateway_url}" if args.gateway_url else "local mode"
    for name, folder in installed.items():
        print(f"Installed kernelspec {name} ({mode}) in {folder}")


if __name__ == "__main__":
    main()

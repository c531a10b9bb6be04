"""Where kcr's kernelspecs live, and the spec manager that serves them.

Every language has one folder ``kernelspecs/kcr-<language>/`` (``kernel.json``
with the ``kcr-provisioner`` stanza, plus logos). The gateway serves exactly
these at ``/api/kernelspecs``; ``kcr-kernels install-kernelspecs`` installs
them for jupyter_client.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import Dict, List, Unicode

PREFIX = "kcr-"


def kernelspecs_dir() -> Path:
    """The folder holding the packaged ``kcr-*`` kernelspecs."""
    installed = Path(sys.prefix) / "share" / "kcr-kernels" / "kernelspecs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[1] / "kernelspecs"


def spec_name(language: str) -> str:
    return PREFIX + language


def spec_language(name: str, spec_language_field: str | None = None) -> str:
    """The pool language a kernelspec runs on (``kcr-python`` → ``python``)."""
    if name.startswith(PREFIX):
        return name[len(PREFIX) :]
    return spec_language_field or name


#: Names that notebooks written for stock kernels use, and the kcr kernelspec they mean.
DEFAULT_ALIASES = {"python3": "kcr-python"}


class KCRKernelSpecManager(KernelSpecManager):
    """Serves only kcr's own kernelspecs, and only for languages that have a pool.

    ``languages`` is set by the gateway from its pool configuration; an empty
    list means every packaged spec. ``aliases`` maps other names to kcr kernelspecs
    (default: ``python3`` → ``kcr-python``): :meth:`resolve` and :meth:`get_kernel_spec`
    accept them, so a notebook whose metadata names ``python3`` and Jupyter Server's own
    default kernel (``python3``, asked for before it has read the gateway's default) start
    a ``kcr-python`` kernel. Aliases are not listed (no second launcher card); an alias
    whose target is not served is ignored.
    """

    languages = List(Unicode(), help="Languages with a pool; others are hidden.").tag(config=True)
    aliases = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value=DEFAULT_ALIASES,
        help="Other kernelspec names accepted for kcr's own, e.g. {'python3': 'kcr-python'} "
        "(the default), so notebooks written for stock kernels run without a kernel choice.",
    ).tag(config=True)

    def resolve(self, kernel_name: str) -> str:
        """``kernel_name``, or the kcr kernelspec it is an alias of."""
        if kernel_name in self.aliases and kernel_name not in self.find_kernel_specs():
            return self.aliases[kernel_name]
        return kernel_name

    def _kernel_dirs_default(self) -> list[str]:
        return [str(kernelspecs_dir())]

    def _user_kernel_dir_default(self) -> str:
        return str(kernelspecs_dir())

    ensure_native_kernel = False

    def find_kernel_specs(self) -> dict[str, str]:
        found = {}
        root = Path(self.kernel_dirs[0])
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if not (folder / "kernel.json").is_file() or not folder.name.startswith(PREFIX):
                continue
            if self.languages and spec_language(folder.name) not in self.languages:
                continue
            found[folder.name] = str(folder)
        return found

    def get_kernel_spec(self, kernel_name: str):
        specs = self.find_kernel_specs()
        kernel_name = self.resolve(kernel_name)
        if kernel_name not in specs:
            raise NoSuchKernel(kernel_name)
        return self.kernel_spec_class.from_resource_dir(specs[kernel_name])

"""The language table: how to start each language's worker and what its ``kernel_info`` says.

The server is language-neutral; everything language-specific about a runner lives here (and
in the worker module the table points at). To add a language, add a ``LanguageSpec`` whose
worker speaks the worker protocol (``runner/README.md``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import __version__


@dataclass(frozen=True)
class LanguageSpec:
    """One language: ``worker_argv()`` is the worker command line (before the sandbox prefix
    is prepended) and ``kernel_info()`` the content of ``GET /kernel_info``."""

    name: str
    worker_argv: Callable[[], list[str]]
    kernel_info: Callable[[], dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def _python_kernel_info() -> dict[str, Any]:
    import IPython

    version = platform.python_version()
    return {
        "protocol_version": "5.3",
        "implementation": "kcr-python",
        "implementation_version": __version__,
        "language_info": {
            "name": "python",
            "version": version,
            "mimetype": "text/x-python",
            "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
            "pygments_lexer": f"ipython{sys.version_info[0]}",
            "nbconvert_exporter": "python",
            "file_extension": ".py",
        },
        "banner": f"Python {sys.version.split()[0]} | IPython {IPython.__version__} | kcr-runner",
        "help_links": [
            {"text": "Python Reference", "url": "https://docs.python.org/3/"},
            {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
        ],
    }


LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        name="python",
        worker_argv=lambda: [sys.executable, "-m", "kcr_runner.python_worker"],
        kernel_info=_python_kernel_info,
    ),
}


def get_language(name: str) -> LanguageSpec:
    """The spec for ``name``; ``KeyError`` with the known names when there is none."""
    try:
        return LANGUAGES[name]
    except KeyError:
        raise KeyError(f"unknown language {name!r}; known: {', '.join(sorted(LANGUAGES))}")

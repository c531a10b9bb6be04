"""The language table: how to start each language's worker and what its ``kernel_info`` says.

The server is language-neutral; everything language-specific about a runner lives here (and
in the worker module the table points at). To add a language, add a ``LanguageSpec`` whose
worker speaks the worker protocol (``runner/README.md``).
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import __version__


@dataclass(frozen=True)
class ProgramSpec:
    """How a "compile and run each cell as a program" language builds and runs one cell.

    Commands are argv lists whose items may hold ``{src}`` (the source file), ``{bin}`` (the
    program to build), ``{dir}`` (the cell's private build folder) and ``{stem}`` (the source
    file's name without its extension). ``compile`` is ``None`` for interpreted languages.
    When ``entry_pattern`` does not match the cell, the cell is put into ``wrapper`` (at
    ``{code}``), so a cell can be a few statements instead of a whole program.
    ``stem_pattern``'s first group, when it matches, names the source file (Java's public
    class).
    """

    source: str
    run: list[str]
    compile: list[str] | None = None
    entry_pattern: str | None = None
    wrapper: str = "{code}"
    stem_pattern: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    compile_timeout: float = 120.0


@dataclass(frozen=True)
class LanguageSpec:
    """One language: ``worker_argv()`` is the worker command line (before the sandbox prefix
    is prepended) and ``kernel_info()`` the content of ``GET /kernel_info``.

    ``persists`` says in words what survives between cells; ``toolchain`` lists the commands
    the language needs on PATH (tests skip a language when one is missing); ``sandbox_paths``
    are host paths (outside ``/usr``) the toolchain needs read-only inside the sandbox;
    ``program`` is set for languages run by the compiled-program worker.
    """

    name: str
    worker_argv: Callable[[], list[str]]
    kernel_info: Callable[[], dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    persists: str = ""
    toolchain: tuple[str, ...] = ()
    sandbox_paths: tuple[str, ...] = ()
    program: ProgramSpec | None = None
    display_name: str = ""


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


@functools.cache
def toolchain_version(argv: tuple[str, ...], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str:
    """The first version number in ``argv``'s output ("" when the tool is missing)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(pattern, out.stdout + out.stderr)
    return found.group(1) if found else ""


def _info(
    name: str,
    *,
    pretty: str,
    version_argv: tuple[str, ...],
    mimetype: str,
    file_extension: str,
    codemirror_mode: str | dict[str, Any],
    pygments_lexer: str,
    help_url: str,
) -> Callable[[], dict[str, Any]]:
    def kernel_info() -> dict[str, Any]:
        version = toolchain_version(version_argv)
        return {
            "protocol_version": "5.3",
            "implementation": f"kcr-{name}",
            "implementation_version": __version__,
            "language_info": {
                "name": name,
                "version": version,
                "mimetype": mimetype,
                "file_extension": file_extension,
                "codemirror_mode": codemirror_mode,
                "pygments_lexer": pygments_lexer,
            },
            "banner": f"{pretty} {version} | kcr-runner",
            "help_links": [{"text": f"{pretty} Reference", "url": help_url}],
        }

    return kernel_info


def _python_module(module: str, *args: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, "-m", module, *args]


def _compiled(name: str) -> Callable[[], list[str]]:
    return _python_module("kcr_runner.compiled_worker", name)


# JVM sizes that fit the sandbox's 4 GiB address-space limit; tiered level 1 starts fastest.
JVM_OPTIONS = [
    "-Xmx512m",
    "-Xss8m",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:CompressedClassSpaceSize=64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
]

LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        name="python",
        worker_argv=lambda: [sys.executable, "-m", "kcr_runner.python_worker"],
        kernel_info=_python_kernel_info,
        persists="everything: variables, imports, functions (and snapshots to the state store)",
        toolchain=(),
        display_name="Python 3 (kcr)",
    ),
    "javascript": LanguageSpec(
        name="javascript",
        worker_argv=_python_module("kcr_runner.node_worker", "javascript"),
        kernel_info=_info(
            "javascript",
            pretty="Node.js",
            version_argv=("node", "--version"),
            mimetype="application/javascript",
            file_extension=".js",
            codemirror_mode="javascript",
            pygments_lexer="javascript",
            help_url="https://nodejs.org/api/",
        ),
        persists="variables, functions, required modules (one Node.js vm context)",
        toolchain=("node",),
        display_name="JavaScript (Node.js, kcr)",
    ),
    "typescript": LanguageSpec(
        name="typescript",
        worker_argv=_python_module("kcr_runner.node_worker", "typescript"),
        kernel_info=_info(
            "typescript",
            pretty="TypeScript",
            version_argv=("tsc", "--version"),
            mimetype="text/typescript",
            file_extension=".ts",
            codemirror_mode={"name": "javascript", "typescript": True},
            pygments_lexer="typescript",
            help_url="https://www.typescriptlang.org/docs/",
        ),
        persists="variables, functions, imported modules (one Node.js vm context)",
        toolchain=("node", "tsc"),
        display_name="TypeScript (Node.js, kcr)",
    ),
    "bash": LanguageSpec(
        name="bash",
        worker_argv=_python_module("kcr_runner.bash_worker"),
        kernel_info=_info(
            "bash",
            pretty="Bash",
            version_argv=("bash", "--version"),
            mimetype="text/x-sh",
            file_extension=".sh",
            codemirror_mode="shell",
            pygments_lexer="bash",
            help_url="https://www.gnu.org/software/bash/manual/",
        ),
        persists="variables, functions, aliases, the working directory (one bash process)",
        toolchain=("bash",),
        display_name="Bash (kcr)",
    ),
    "r": LanguageSpec(
        name="r",
        worker_argv=_python_module("kcr_runner.r_worker"),
        kernel_info=_info(
            "R",
            pretty="R",
            version_argv=("R", "--version"),
            mimetype="text/x-r-source",
            file_extension=".r",
            codemirror_mode="r",
            pygments_lexer="r",
            help_url="https://cran.r-project.org/manuals.html",
        ),
        persists="variables, functions, attached packages, options (one R process)",
        toolchain=("R",),
        sandbox_paths=("/etc/R",),
        display_name="R (kcr)",
    ),
    "go": LanguageSpec(
        name="go",
        worker_argv=_compiled("go"),
        kernel_info=_info(
            "go",
            pretty="Go",
            version_argv=("go", "version"),
            mimetype="text/x-go",
            file_extension=".go",
            codemirror_mode="go",
            pygments_lexer="go",
            help_url="https://go.dev/doc/",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("go",),
        program=ProgramSpec(
            source="main.go",
            compile=["go", "build", "-o", "{bin}", "{src}"],
            run=["{bin}"],
            entry_pattern=r"(?m)^\s*package\s+\w+",
            wrapper='package main\n\nimport "fmt"\n\nvar _ = fmt.Println\n\n'
            "func main() {\n{code}\n}\n",
            env={
                "GOCACHE": "/tmp/kcr-go-cache",
                "GOPATH": "/tmp/kcr-go",
                "GO111MODULE": "off",
                "GOTOOLCHAIN": "local",
            },
        ),
        display_name="Go (kcr)",
    ),
    "rust": LanguageSpec(
        name="rust",
        worker_argv=_compiled("rust"),
        kernel_info=_info(
            "rust",
            pretty="Rust",
            version_argv=("rustc", "--version"),
            mimetype="text/rust",
            file_extension=".rs",
            codemirror_mode="rust",
            pygments_lexer="rust",
            help_url="https://doc.rust-lang.org/std/",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("rustc",),
        program=ProgramSpec(
            source="main.rs",
            compile=["rustc", "--edition", "2021", "-C", "debuginfo=0", "-o", "{bin}", "{src}"],
            run=["{bin}"],
            entry_pattern=r"\bfn\s+main\s*\(",
            wrapper="fn main() {\n{code}\n}\n",
        ),
        display_name="Rust (kcr)",
    ),
    "c": LanguageSpec(
        name="c",
        worker_argv=_compiled("c"),
        kernel_info=_info(
            "c",
            pretty="C (gcc)",
            version_argv=("gcc", "-dumpfullversion"),
            mimetype="text/x-csrc",
            file_extension=".c",
            codemirror_mode="text/x-csrc",
            pygments_lexer="c",
            help_url="https://en.cppreference.com/w/c",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("gcc",),
        program=ProgramSpec(
            source="main.c",
            compile=["gcc", "-std=gnu17", "-O1", "-o", "{bin}", "{src}", "-lm"],
            run=["{bin}"],
            entry_pattern=r"\bmain\s*\(",
            wrapper="#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
            "#include <math.h>\n#include <unistd.h>\n\nint main(void) {\n"
            "setvbuf(stdout, NULL, _IOLBF, 0);\n{code}\nreturn 0;\n}\n",
        ),
        display_name="C (gcc, kcr)",
    ),
    "cpp": LanguageSpec(
        name="cpp",
        worker_argv=_compiled("cpp"),
        kernel_info=_info(
            "c++",
            pretty="C++ (g++)",
            version_argv=("g++", "-dumpfullversion"),
            mimetype="text/x-c++src",
            file_extension=".cpp",
            codemirror_mode="text/x-c++src",
            pygments_lexer="cpp",
            help_url="https://en.cppreference.com/w/cpp",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("g++",),
        program=ProgramSpec(
            source="main.cpp",
            compile=["g++", "-std=c++17", "-O1", "-o", "{bin}", "{src}"],
            run=["{bin}"],
            entry_pattern=r"\bmain\s*\(",
            wrapper="#include <iostream>\n#include <string>\n#include <vector>\n"
            "#include <map>\n#include <algorithm>\n#include <thread>\n#include <chrono>\n"
            "using namespace std;\n\nint main() {\ncout << unitbuf;\n{code}\nreturn 0;\n}\n",
        ),
        display_name="C++ (g++, kcr)",
    ),
    "java": LanguageSpec(
        name="java",
        worker_argv=_python_module("kcr_runner.java_worker"),
        kernel_info=_info(
            "java",
            pretty="Java",
            version_argv=("javac", "-version"),
            mimetype="text/x-java",
            file_extension=".java",
            codemirror_mode="text/x-java",
            pygments_lexer="java",
            help_url="https://docs.oracle.com/en/java/javase/17/docs/api/",
        ),
        persists="variables, methods, classes, imports (one JShell in one JVM)",
        toolchain=("javac", "java"),
        sandbox_paths=("/etc/java-17-openjdk",),
        display_name="Java (kcr)",
    ),
    "php": LanguageSpec(
        name="php",
        worker_argv=_compiled("php"),
        kernel_info=_info(
            "php",
            pretty="PHP",
            version_argv=("php", "--version"),
            mimetype="application/x-httpd-php",
            file_extension=".php",
            codemirror_mode="php",
            pygments_lexer="php",
            help_url="https://www.php.net/manual/",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("php",),
        sandbox_paths=("/etc/php",),
        program=ProgramSpec(
            source="main.php",
            compile=["php", "-n", "-l", "{src}"],
            run=["php", "-n", "-d", "display_errors=stderr", "-d", "implicit_flush=1", "{src}"],
            entry_pattern=r"^\s*<\?php",
            wrapper="<?php\n{code}\n",
        ),
        display_name="PHP (kcr)",
    ),
    "fortran": LanguageSpec(
        name="fortran",
        worker_argv=_compiled("fortran"),
        kernel_info=_info(
            "fortran",
            pretty="Fortran (gfortran)",
            version_argv=("gfortran", "-dumpfullversion"),
            mimetype="text/x-fortran",
            file_extension=".f90",
            codemirror_mode="fortran",
            pygments_lexer="fortran",
            help_url="https://gcc.gnu.org/onlinedocs/gfortran/",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("gfortran",),
        program=ProgramSpec(
            source="main.f90",
            compile=["gfortran", "-O1", "-o", "{bin}", "{src}"],
            run=["{bin}"],
            entry_pattern=r"(?im)^\s*program\s+\w+",
            wrapper="program main\n{code}\nend program main\n",
            env={"GFORTRAN_UNBUFFERED_PRECONNECTED": "y"},
        ),
        display_name="Fortran (gfortran, kcr)",
    ),
    "d": LanguageSpec(
        name="d",
        worker_argv=_compiled("d"),
        kernel_info=_info(
            "d",
            pretty="D (ldc)",
            version_argv=("ldc2", "--version"),
            mimetype="text/x-d",
            file_extension=".d",
            codemirror_mode="d",
            pygments_lexer="d",
            help_url="https://dlang.org/phobos/",
        ),
        persists="workspace files only (each cell is a new program)",
        toolchain=("ldc2",),
        sandbox_paths=("/etc/ldc2.conf",),
        program=ProgramSpec(
            source="main.d",
            compile=["ldc2", "-of={bin}", "-od={dir}", "{src}"],
            run=["{bin}"],
            entry_pattern=r"\bmain\s*\(",
            wrapper="import std.stdio;\n\nvoid main() {\nstdout.setvbuf(0, _IOLBF);\n{code}\n}\n",
        ),
        display_name="D (ldc, kcr)",
    ),
}


def sandbox_read_only_paths() -> list[str]:
    """Every language's extra read-only host paths that exist here (for the sandbox)."""
    import os

    paths: list[str] = []
    for spec in LANGUAGES.values():
        paths += [p for p in spec.sandbox_paths if os.path.exists(p) and p not in paths]
    return paths


def get_language(name: str) -> LanguageSpec:
    """The spec for ``name``; ``KeyError`` with the known names when there is none."""
    try:
        return LANGUAGES[name]
    except KeyError:
        raise KeyError(f"unknown language {name!r}; known: {', '.join(sorted(LANGUAGES))}")

"""The bubblewrap sandbox that the local backend puts around a pod's worker.

The runner (the trusted supervisor) starts its worker -- the process that runs
user code -- as ``prefix + [python, "-m", worker_module]``. :class:`Sandbox`
builds that ``prefix``: an optional join of the pod's cgroups (pids and memory caps, see
:mod:`kcr_kernels.backends.cgroups`), ``prlimit`` for the
rlimits, then ``bwrap`` with every namespace unshared and a minimal read-only
view of the system. See ``docs/sandbox.md`` for the full isolation model and
what holds when the gateway runs as root.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kcr_runner.languages import sandbox_read_only_paths

from .cgroups import PodCgroup

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2

#: Where the workspace appears inside the sandbox (the worker's cwd and HOME).
SANDBOX_WORKSPACE = "/work"
#: The same workspace under the name code-interpreter clients expect (``/v1/exec`` callers
#: such as LibreChat write to ``/mnt/data``): both names are one folder.
SANDBOX_WORKSPACE_ALIAS = "/mnt/data"
#: Where source folders of editable installs (e.g. ``kcr_runner``) appear.
SANDBOX_SRC = "/opt/kcr/src"

# System folders bound read-only when they are real directories on the host,
# or re-created as the same symlink when they are symlinks (merged-/usr hosts).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# The only pieces of the host's /etc the worker sees: dynamic linker config,
# time zone, TLS roots, the alternatives symlinks under /usr/bin, fonts (for
# matplotlib) and MIME types. Never passwd/shadow/hostname/resolv.conf: the
# sandbox gets its own passwd, group and hosts (see Sandbox.etc_dir).
_ETC_ALLOWLIST = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "fonts",
    "mime.types",
    "nsswitch.conf",
)


#: Host folders one of which the staged mode mounts its private tmpfs on (in its own mount
#: namespace only; the host never sees it). See :meth:`Sandbox.prefix`.
_STAGE_DIRS = ("/mnt", "/media", "/srv", "/opt")

# Run as root in a private mount namespace: join the pids cgroup ($1, may be empty), mount a
# tmpfs on $2 and bind every source folder that follows onto $2/0, $2/1, ... up to "--",
# then exec the rest. The sandbox user can then reach each source even where its host path
# goes through a folder it may not enter (a root gateway whose Python lives under /root).
_STAGE_SCRIPT = (
    'set -e; cg=$1; stage=$2; shift 2; if [ -n "$cg" ]; then echo $$ > "$cg/cgroup.procs"; fi; '
    'mount -t tmpfs -o mode=0755,size=64k kcr-stage "$stage"; i=0; '
    'while [ "$1" != "--" ]; do mkdir "$stage/$i"; mount --bind "$1" "$stage/$i"; '
    'i=$((i+1)); shift; done; shift; exec "$@"'
)


class SandboxUnavailable(RuntimeError):
    """Sandboxed pods cannot be started on this host.

    The message is one line that names what is missing and the two ways out:
    install bubblewrap, or explicitly allow unsandboxed pods.
    """


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed worker. ``None`` means "no limit".

    * ``address_space`` -- RLIMIT_AS in bytes, per process: large allocations
      raise ``MemoryError`` in Python. The cap on the kernel as a whole (all
      its processes) is the pod's memory cgroup, set by the local backend.
    * ``processes`` -- a cap on the number of tasks (processes + threads) the
      worker can have. Enforced by a per-pod pids cgroup when the host lets the
      gateway create one, and by RLIMIT_NPROC otherwise (which the kernel does
      NOT enforce when the gateway runs as root; see docs/sandbox.md).
    * ``cpu_seconds`` -- RLIMIT_CPU: the worker is killed (SIGKILL after
      SIGXCPU) after this much CPU time over its whole life. Off by default:
      a kernel is long-lived.
    * ``file_size`` -- RLIMIT_FSIZE in bytes: a larger write fails (EFBIG).
    * ``open_files`` -- RLIMIT_NOFILE.
    * ``tmp_size`` -- size of each private tmpfs (/tmp, /dev/shm) in bytes.
    """

    address_space: int | None = 4 * GIB
    processes: int | None = 256
    cpu_seconds: int | None = None
    file_size: int | None = 1 * GIB
    open_files: int | None = 1024
    tmp_size: int | None = 256 * MIB

    def prlimit_args(self) -> list[str]:
        """``prlimit`` options for these limits (soft = hard)."""
        pairs = (
            ("--as", self.address_space),
            ("--nproc", self.processes),
            ("--cpu", self.cpu_seconds),
            ("--fsize", self.file_size),
            ("--nofile", self.open_files),
        )
        return [f"{opt}={value}" for opt, value in pairs if value is not None]


def _module_dir(module: str) -> Path | None:
    """The folder that holds package ``module`` (e.g. the parent of ``kcr_runner/``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    origin = Path(spec.origin).resolve()
    package = origin.parent if origin.name == "__init__.py" else origin
    return package


def _is_within(path: Path, parents: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


class Sandbox:
    """Builds the launch prefix that sandboxes a pod's worker with bubblewrap.

    ``Sandbox(state_dir)`` writes the sandbox's own ``/etc/passwd``,
    ``/etc/group`` and ``/etc/hosts`` under ``state_dir/etc`` once. Then
    :meth:`prefix` returns, for one workspace, the argv prefix the runner puts
    in front of ``[python, "-m", worker]``. The worker sees:

    * uid/gid ``uid``/``gid`` (user ``kcr``) inside; on the host, ``host_uid``/``host_gid``
      when given (see below), otherwise the gateway's own uid; own user, network (loopback
      only), PID, IPC, UTS, cgroup and mount namespaces, no further user
      namespaces;
    * read-only: the host's system folders (``/usr`` and the ``/bin``,
      ``/lib*`` links), an allow-list of ``/etc`` entries, the Python
      installation (``sys.base_prefix``), the virtualenv (``sys.prefix``) and
      the package folders of ``modules`` that live outside both (editable
      installs), the latter under ``/opt/kcr/src`` on ``PYTHONPATH``;
    * read-write: the workspace at ``/work`` (cwd and ``HOME``; also bound at
      ``/mnt/data``, the name code-interpreter clients use) and a private
      tmpfs ``/tmp``; fresh ``/proc`` and ``/dev``.

    Nothing else: no home directory, no host ``/tmp``, no gateway data, no
    other workspace. :meth:`check` verifies that bubblewrap exists and can
    create the namespaces, raising :class:`SandboxUnavailable` otherwise.

    ``host_uid``/``host_gid`` (for a gateway running as root): the sandbox runs as this
    unprivileged host user instead of mapping to host root. The prefix then starts, as root,
    in a private mount namespace that joins the pids cgroup and binds the private source
    folders (Python installation, virtualenv, editable packages, the generated ``/etc``
    files, the workspace) onto a small staging tmpfs the sandbox user can enter, drops to
    ``host_uid`` with ``setpriv`` (no supplementary groups), and only then runs ``prlimit``
    and ``bwrap``. Files the kernel writes in the workspace belong to ``host_uid``; the
    runner does its workspace file operations as that uid too (``kcr_runner.file_identity``).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        limits: SandboxLimits | None = None,
        bwrap: str = "bwrap",
        prlimit: str = "prlimit",
        uid: int = 1000,
        gid: int = 1000,
        modules: tuple[str, ...] = ("kcr_runner",),
        python_dirs: tuple[str, ...] | None = None,
        host_uid: int | None = None,
        host_gid: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.limits = limits or SandboxLimits()
        self.bwrap = bwrap
        self.prlimit = prlimit
        self.uid = uid
        self.gid = gid
        self.modules = modules
        self.python_dirs = python_dirs
        self.host_uid = host_uid
        self.host_gid = host_gid if host_gid is not None else host_uid
        self.etc_dir = self.state_dir / "etc"
        self._ro_binds: list[tuple[str, str]] | None = None

    # -- prerequisites -------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` unless bwrap can build a sandbox here.

        Blocking (runs ``bwrap`` once); call it through ``asyncio.to_thread``.
        """
        way_out = (
            "install it (apt-get install bubblewrap) or start the gateway with "
            "--KCRGateway.allow_unsandboxed=True to run pods WITHOUT a sandbox"
        )
        bwrap = shutil.which(self.bwrap)
        if bwrap is None:
            raise SandboxUnavailable(
                f"bubblewrap ({self.bwrap!r}) not found, so kernels cannot be sandboxed: {way_out}"
            )
        prlimit = shutil.which(self.prlimit)
        if prlimit is None:
            raise SandboxUnavailable(
                f"prlimit ({self.prlimit!r}, from util-linux) not found, so sandbox limits "
                "cannot be applied: install util-linux or start the gateway with "
                "--KCRGateway.allow_unsandboxed=True to run pods WITHOUT a sandbox"
            )
        true = "/bin/true" if Path("/bin/true").exists() else "true"
        if self.host_uid is not None:
            self.write_etc()
            probe = [*self._as_host_user(self._bwrap_core(), [], self.host_uid), "--", true]
        else:
            probe = [*self._bwrap_core(), "--", true]
        try:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"bubblewrap ({bwrap}) cannot run: {e}; {way_out}")
        if result.returncode != 0:
            why = (result.stderr.strip().splitlines() or ["no error message"])[-1]
            raise SandboxUnavailable(
                f"bubblewrap ({bwrap}) cannot create the sandbox namespaces ({why}); "
                "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
                f"/ user.max_user_namespaces) or {way_out}"
            )

    # -- the view of the system ---------------------------------------------

    def write_etc(self) -> None:
        """Write the sandbox's own passwd, group and hosts (idempotent)."""
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "passwd": (
                "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                f"kcr:x:{self.uid}:{self.gid}:kcr kernel:{SANDBOX_WORKSPACE}:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
            "group": f"root:x:0:\nkcr:x:{self.gid}:\nnogroup:x:65534:\n",
            "hosts": "127.0.0.1 localhost kcr-pod\n::1 localhost ip6-localhost ip6-loopback\n",
        }
        for name, text in files.items():
            path = self.etc_dir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                path.chmod(0o644)

    def python_paths(self) -> list[Path]:
        """The Python installation and virtualenv folders bound read-only."""
        if self.python_dirs is not None:
            return [Path(p) for p in self.python_dirs]
        paths: list[Path] = []
        for p in (sys.base_prefix, sys.prefix):
            path = Path(p).resolve()
            if not _is_within(path, paths):
                paths.append(path)
        # An interpreter outside both prefixes: bind its installation root (bin/..).
        interpreter_root = Path(os.path.realpath(sys.executable)).parent.parent
        if not _is_within(interpreter_root, paths):
            paths.append(interpreter_root)
        return paths

    def source_binds(self, bound: list[Path]) -> list[tuple[str, str]]:
        """(host, sandbox) binds for packages in ``modules`` found outside ``bound``."""
        binds = []
        for module in self.modules:
            package = _module_dir(module)
            if package is None or _is_within(package, bound):
                continue
            binds.append((str(package), f"{SANDBOX_SRC}/{package.name}"))
        return binds

    def read_only_binds(self) -> list[tuple[str, str]]:
        """Every (host path, sandbox path) pair bound read-only (computed once)."""
        if self._ro_binds is None:
            python = self.python_paths()
            binds = [(str(p), str(p)) for p in python]
            binds += self.source_binds([*python, Path("/usr")])
            self._ro_binds = binds
        return self._ro_binds

    # -- the prefix ------------------------------------------------------------

    def _bwrap_core(self) -> list[str]:
        """Namespace and identity options shared by the probe and real prefixes."""
        args = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--uid",
            str(self.uid),
            "--gid",
            str(self.gid),
            "--hostname",
            "kcr-pod",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        return args

    def prefix(
        self, workspace: Path, *, cgroup: PodCgroup | None = None, host_uid: int | None = None
    ) -> list[str]:
        """The argv prefix that runs a command sandboxed in ``workspace``.

        ``host_uid``: this pod's host uid (and gid) in the staged mode (default: the
        ``host_uid`` given at construction).

        ``cgroup``: the pod's cgroup folders (pids and memory caps) the worker
        joins before anything else runs; see :mod:`kcr_kernels.backends.cgroups`.
        """
        self.write_etc()
        workspace = Path(workspace).resolve()
        ro = self.read_only_binds()
        uid = host_uid if host_uid is not None else self.host_uid
        staged = uid is not None
        # Private sources the sandbox user may be unable to reach by their host path.
        sources = [str(self.etc_dir), str(workspace), *(src for src, _dest in ro)]

        def src(path: str) -> str:
            if not staged:
                return path
            for i, source in enumerate(sources):
                if path == source or path.startswith(source + "/"):
                    return f"{self.stage_dir(sources)}/{i}{path[len(source) :]}"
            return path

        args: list[str] = []
        if cgroup is not None and cgroup.folders:
            # The runner is trusted and unsandboxed: this host shell moves itself into
            # each of the pod's cgroups (one per controller on v1), then execs
            # [the staging mount namespace ->] prlimit -> bwrap -> worker. Failing to join
            # one stops the worker.
            args += [
                "/bin/sh",
                "-c",
                'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done;'
                ' shift; exec "$@"',
                "kcr-cgroup",
                *(str(f) for f in cgroup.folders),
                "--",
            ]
        core: list[str] = []
        limits = self.limits.prlimit_args()
        if limits:
            core += [self.prlimit, *limits, "--"]
        core += self._bwrap_core()
        if staged:
            args += self._as_host_user(core, sources, uid)
        else:
            args += core
        for target in ("/tmp", "/dev/shm"):
            if self.limits.tmp_size is not None:
                args += ["--size", str(self.limits.tmp_size)]
            args += ["--tmpfs", target]
        args += ["--dir", "/etc"]
        for name in _ETC_ALLOWLIST:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hosts"):
            args += ["--ro-bind", src(str(self.etc_dir / name)), f"/etc/{name}"]
        # Toolchain configuration outside /usr that the language table names (Java's
        # /etc/java-17-openjdk, R's /etc/R, ...): read-only, only where it exists.
        for path in sandbox_read_only_paths():
            args += ["--ro-bind-try", path, path]
        for source, dest in ro:
            args += ["--ro-bind", src(source), dest]
        pythonpath = [dest for _src, dest in ro if dest.startswith(SANDBOX_SRC + "/")]
        args += ["--bind", src(str(workspace)), SANDBOX_WORKSPACE]
        args += ["--bind", src(str(workspace)), SANDBOX_WORKSPACE_ALIAS]
        args += ["--chdir", SANDBOX_WORKSPACE]
        venv_bin = str(Path(sys.prefix) / "bin")
        env = {
            "HOME": SANDBOX_WORKSPACE,
            "TMPDIR": "/tmp",
            "USER": "kcr",
            "LOGNAME": "kcr",
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        }
        if pythonpath:
            env["PYTHONPATH"] = ":".join(sorted({str(Path(p).parent) for p in pythonpath}))
        for key, value in env.items():
            args += ["--setenv", key, value]
        # The runner's token must never reach user code.
        args += ["--unsetenv", "KCR_RUNNER_TOKEN"]
        # The sandbox's root and /dev are tmpfs mounts bwrap builds; make them read-only
        # too, so /work, /tmp and /dev/shm (both private, size-capped) are the only
        # writable places. Device nodes (/dev/null, ...) stay usable.
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--"]
        return args

    @staticmethod
    def stage_dir(sources: list[str]) -> str:
        """The host folder the staging tmpfs goes on: one that holds none of ``sources``."""
        for stage in _STAGE_DIRS:
            if os.path.isdir(stage) and not any(
                p == stage or p.startswith(stage + "/") for p in sources
            ):
                return stage
        raise SandboxUnavailable(
            f"no folder for the sandbox's staging mount (tried {', '.join(_STAGE_DIRS)})"
        )

    def _as_host_user(self, core: list[str], sources: list[str], uid: int) -> list[str]:
        """``core`` wrapped: private mount namespace, staged sources, then ``host_uid``."""
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _STAGE_SCRIPT,
            "kcr-sandbox",  # $0
            "",  # $1: no cgroup to join here (the outer shell joined the pod's cgroups)
            self.stage_dir(sources),
            *sources,
            "--",
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid if uid != self.host_uid else self.host_gid}",
            "--clear-groups",
            "--",
            *core,
        ]

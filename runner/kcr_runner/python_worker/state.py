"""Snapshot and restore of the user namespace: cloudpickle + lz4 frame behind a small header.

Blob layout (all integers big-endian)::

    b"KCRSTATE"            8 bytes magic
    version                2 bytes, currently 1
    header_length          4 bytes
    header                 header_length bytes of UTF-8 JSON:
                           {"python": "3.11.7", "cloudpickle": "3.1.1", "names": [...],
                            "modules": {name: module}, "imports": {name: [module, qualname]},
                            "skipped": [{"name": ..., "reason": ...}],
                            "execution_count": N}
    payload                lz4 frame of cloudpickle.dumps({name: value})

Modules (``import numpy as np``) and plain module members (``from os.path import join``) are
recorded in the header and re-imported on restore instead of being pickled.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import platform
import struct
import types
from typing import Any

import cloudpickle
import lz4.frame

MAGIC = b"KCRSTATE"
VERSION = 1
_PREFIX = struct.Struct(">8sHI")


class StateTooLarge(Exception):
    """The snapshot would exceed the configured size limit."""


class BadStateBlob(Exception):
    """The blob is not a state snapshot this worker can read."""


def _module_member(value: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` when ``value`` is importable by name from a real module."""
    if not isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not module_name or not qualname or module_name in ("__main__", "builtins"):
        return None
    if "<" in qualname:
        return None
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return (module_name, qualname) if target is value else None


def _user_names(shell) -> list[str]:
    hidden = set(shell.user_ns_hidden)
    return [
        name
        for name, value in shell.user_ns.items()
        if not name.startswith("_") and name not in hidden and not _is_ipython_object(value)
    ]


def _is_ipython_object(value: Any) -> bool:
    module = getattr(type(value), "__module__", "") or ""
    return module.startswith("IPython.") and not isinstance(value, type)


def snapshot(shell, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """Serialize the user namespace; returns ``(blob, header)``; raises ``StateTooLarge``."""
    modules: dict[str, str] = {}
    imports: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []
    for name in _user_names(shell):
        value = shell.user_ns[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        member = _module_member(value)
        if member is not None:
            imports[name] = list(member)
            continue
        values[name] = value
    try:
        payload = _dumps(values, shell.user_ns)
    except Exception:
        # Find the culprits one by one, then pickle the rest together (shared references kept).
        for name in list(values):
            try:
                cloudpickle.dumps(values[name])
            except Exception as exc:
                skipped.append({"name": name, "reason": f"{type(exc).__name__}: {exc}"})
                del values[name]
        payload = _dumps(values, shell.user_ns)
    compressed = lz4.frame.compress(payload)
    header = {
        "python": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
        "names": sorted(values),
        "modules": modules,
        "imports": imports,
        "skipped": skipped,
        # So a kernel that moves to a new pod keeps numbering its cells where it was.
        "execution_count": shell.execution_count,
    }
    header_bytes = json.dumps(header).encode()
    blob = _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + compressed
    if len(blob) > max_bytes:
        raise StateTooLarge(_too_large(len(blob), max_bytes))
    return blob, header


def _too_large(size: int, limit: int) -> str:
    return (
        f"the kernel state is too large to snapshot: the compressed blob is {size} bytes, over the "
        f"limit of {limit} bytes (--max-state-bytes); delete big variables and try again"
    )


def read_header(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a blob into its JSON header and compressed payload; raises ``BadStateBlob``."""
    if len(blob) < _PREFIX.size:
        raise BadStateBlob("state blob is too short to hold a header")
    magic, version, header_length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise BadStateBlob("not a kcr state blob (bad magic)")
    if version != VERSION:
        raise BadStateBlob(f"state blob version {version} is not supported (expected {VERSION})")
    end = _PREFIX.size + header_length
    try:
        header = json.loads(blob[_PREFIX.size : end])
    except ValueError as exc:
        raise BadStateBlob(f"state blob header is not valid JSON: {exc}")
    return header, blob[end:]


def restore(shell, blob: bytes) -> dict[str, Any]:
    """Load a blob into the namespace; returns ``{"restored": [...], "errors": [...]}``."""
    header, compressed = read_header(blob)
    restored: list[str] = []
    errors: list[dict[str, str]] = []
    for name, module_name in header.get("modules", {}).items():
        try:
            shell.user_ns[name] = importlib.import_module(module_name)
            restored.append(name)
        except Exception as exc:
            errors.append({"name": name, "reason": f"import {module_name}: {exc}"})
    for name, (module_name, qualname) in header.get("imports", {}).items():
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
            shell.user_ns[name] = target
            restored.append(name)
        except Exception as exc:
            errors.append({"name": name, "reason": f"from {module_name} import {qualname}: {exc}"})
    try:
        values = _loads(lz4.frame.decompress(compressed), shell.user_ns)
    except Exception as exc:
        raise BadStateBlob(f"state payload could not be loaded: {type(exc).__name__}: {exc}")
    shell.user_ns.update(values)
    restored.extend(values)
    count = header.get("execution_count")
    if isinstance(count, int) and count > shell.execution_count:
        shell.execution_count = count
    return {"restored": sorted(restored), "errors": errors}


# Functions and classes defined in cells have the user namespace as their globals. cloudpickle
# would give them a private copy of the globals they read, so after a restore `counter = 2`
# in a cell would not be seen by a restored `f()` that reads `counter`. Instead, the namespace
# is pickled as a reference (a persistent id) that the loader resolves to the live namespace
# of the new kernel: restored functions see later assignments, as before the move.
_NAMESPACE = "kcr:user_ns"


class _NamespacePickler(cloudpickle.Pickler):
    def __init__(self, file, namespace: dict):
        super().__init__(file)
        self._namespace = namespace
        # cloudpickle gives functions with the same __globals__ one shared globals dict:
        # make that dict the namespace itself.
        self.globals_ref[id(namespace)] = namespace

    def persistent_id(self, obj):
        return _NAMESPACE if obj is self._namespace else None


class _NamespaceUnpickler(pickle.Unpickler):
    def __init__(self, file, namespace: dict):
        super().__init__(file)
        self._namespace = namespace

    def persistent_load(self, pid):
        if pid == _NAMESPACE:
            return self._namespace
        raise pickle.UnpicklingError(f"unknown reference in the state blob: {pid!r}")


def _dumps(values: dict[str, Any], namespace: dict) -> bytes:
    buffer = io.BytesIO()
    _NamespacePickler(buffer, namespace).dump(values)
    return buffer.getvalue()


def _loads(data: bytes, namespace: dict) -> Any:
    return _NamespaceUnpickler(io.BytesIO(data), namespace).load()

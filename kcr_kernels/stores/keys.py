"""Validation of kernel ids and file paths: the one place that decides what is addressable.

Every store calls :func:`validate_kernel_id` and :func:`validate_path` before
touching storage, so a kernel id can never reach into another kernel's
keys or folder, and a path can never leave its kernel's folder or prefix.
"""

from __future__ import annotations

import re

from .errors import InvalidKernelId, InvalidPath

KERNEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PATH_BYTES = 1024 - 200  # S3 keys are at most 1024 bytes; leave room for prefix + kernel id
MAX_SEGMENT_BYTES = 255  # the usual file name limit (ext4, xfs, ...)


def validate_kernel_id(kernel_id: str, *, url: str = "", operation: str = "") -> str:
    """Return ``kernel_id`` if it is a valid kernel id, else raise :class:`InvalidKernelId`.

    Valid: 1-128 characters of ``[A-Za-z0-9._-]`` starting with a letter or
    digit (no ``/``, no ``:``, never ``.`` or ``..``).
    """
    if not isinstance(kernel_id, str) or not KERNEL_ID_RE.fullmatch(kernel_id):
        raise InvalidKernelId(
            url,
            operation or "validate_kernel_id",
            f"invalid kernel id {kernel_id!r}: use 1-128 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit",
        )
    return kernel_id


#: A NUL or other control character (C0 or DEL). One regex search per path: a sync of
#: 20,000 files validates every name on the event loop.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def validate_path(path: str, *, url: str = "", operation: str = "") -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise :class:`InvalidPath`.

    Rules: a non-empty ``str``; relative (no leading ``/``); ``/``-separated
    with no empty segment (no ``//``, no trailing ``/``); no ``.`` or ``..``
    segment; no backslash; no NUL or other control character; at most
    ``MAX_PATH_BYTES`` UTF-8 bytes in all and ``MAX_SEGMENT_BYTES`` per
    segment. Paths are not normalised: the path you pass is the key you get
    back from ``list``.
    """
    op = operation or "validate_path"

    def bad(why: str) -> InvalidPath:
        return InvalidPath(url, op, f"invalid path {path!r}: {why}")

    if not isinstance(path, str):
        raise bad("must be a string")
    if not path:
        raise bad("empty")
    if _CONTROL.search(path):
        raise bad("contains a NUL or control character")
    if "\\" in path:
        raise bad("contains a backslash (paths are POSIX, '/'-separated)")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise bad("is not valid UTF-8 text")
    if len(encoded) > MAX_PATH_BYTES:
        raise bad(f"longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise bad("absolute paths are not allowed")
    for segment in path.split("/"):
        if segment == "":
            raise bad("empty path segment ('//' or trailing '/')")
        if segment in (".", ".."):
            raise bad(f"'{segment}' segments are not allowed")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise bad(f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return path

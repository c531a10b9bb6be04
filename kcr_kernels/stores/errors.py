"""Errors raised by every store, and the URL redaction used in their messages.

Callers catch :class:`StoreError` for "the store failed" and
:class:`StoreUnavailable` for "the store cannot be reached right now: report a
warning and retry later". Every message names the store URL (password
redacted) and the operation that failed.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class StoreError(Exception):
    """A store operation failed.

    ``url`` is the store URL with its password redacted; ``operation`` says
    what was attempted (e.g. ``"put_state('k1')"``). ``str(err)`` combines both
    with the cause, so it can be shown to a user or logged as is.
    """

    def __init__(self, url: str, operation: str, detail: str):
        self.url = redact_url(url)
        self.operation = operation
        self.detail = detail
        super().__init__(f"{operation} failed on {self.url}: {detail}")


class StoreUnavailable(StoreError):
    """The store could not be reached (refused, timed out, disconnected, locked).

    Transient by nature: the gateway reports it as a warning and retries later.
    Raised within the store's connect/socket timeout, never after a hang.
    """


class StoreConfigError(StoreError, ValueError):
    """The store URL or one of its settings is not valid."""


class InvalidKernelId(StoreError, ValueError):
    """A kernel id is not usable as a store key.

    Kernel ids are 1-128 characters from ``[A-Za-z0-9._-]`` and start with a
    letter or digit (every UUID qualifies). This keeps one kernel's keys and
    files out of reach of any other kernel id.
    """


class StateTooLarge(StoreError):
    """A state blob is larger than the store's ``max_state_bytes``.

    Nothing was written. ``size`` and ``limit`` are in bytes.
    """

    def __init__(self, url: str, kernel_id: str, size: int, limit: int):
        self.kernel_id = kernel_id
        self.size = size
        self.limit = limit
        super().__init__(
            url,
            f"put_state({kernel_id!r})",
            f"state blob is {size} bytes, over the limit of {limit} bytes (max_state_bytes)",
        )


class InvalidPath(StoreError, ValueError):
    """A file path is not a safe relative POSIX path (see ``validate_path``)."""


class FileNotFound(StoreError, FileNotFoundError):
    """The kernel has no file at that path."""


class FileTooLarge(StoreError):
    """A file being written went over ``max_bytes``; no partial file was kept.

    ``limit`` is the limit in bytes; ``received`` how many bytes had arrived
    when the write was stopped (at least ``limit + 1``).
    """

    def __init__(self, url: str, operation: str, received: int, limit: int):
        self.received = received
        self.limit = limit
        super().__init__(
            url, operation, f"file is over the limit of {limit} bytes (max_bytes); nothing kept"
        )

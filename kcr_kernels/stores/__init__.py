"""Durable stores for kernels, chosen by URL.

* :func:`open_kernel_store` — kernel registry + state blobs + leases:
  ``redis://host:port/db`` (production) or ``sqlite:///abs/path/kcr.db``
  (embedded default).
* :func:`open_file_store` — each kernel's working files:
  ``s3://bucket/prefix`` (production; AWS S3, MinIO, Ceph RGW) or
  ``file:///abs/path`` (embedded default).

Every failure is a :class:`StoreError`; an unreachable service is a
:class:`StoreUnavailable`. See ``docs/stores.md``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import (
    FileNotFound,
    FileTooLarge,
    InvalidKernelId,
    InvalidPath,
    StateTooLarge,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    redact_url,
)
from .file_store import FileEntry, FileStore
from .kernel_store import KernelStore
from .keys import validate_kernel_id, validate_path

__all__ = [
    "FileEntry",
    "FileNotFound",
    "FileStore",
    "FileTooLarge",
    "InvalidKernelId",
    "InvalidPath",
    "KernelStore",
    "StateTooLarge",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailable",
    "open_file_store",
    "open_kernel_store",
    "redact_url",
    "validate_kernel_id",
    "validate_path",
]


def _scheme(url: str, operation: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except (ValueError, AttributeError):
        raise StoreConfigError(str(url), operation, "not a URL") from None


def open_kernel_store(
    url: str,
    *,
    state_ttl: float | None = None,
    max_state_bytes: int | None = None,
    timeout: float = 5.0,
) -> KernelStore:
    """Open the kernel store at ``url`` (no I/O happens until the first call).

    ``redis://[user:pass@]host:port/db`` (also ``rediss://``, ``unix://``) →
    Redis; ``sqlite:///abs/path/kcr.db`` → SQLite. ``state_ttl``: seconds a
    state blob lives (``None``: forever). ``max_state_bytes``: larger blobs
    raise :class:`StateTooLarge`. ``timeout``: seconds to connect / wait for an
    answer (Redis) or for the database lock (SQLite) before
    :class:`StoreUnavailable`. The Redis client needs ``kcr-kernels[redis]``.
    """
    scheme = _scheme(url, "open_kernel_store")
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis_kernel_store import RedisKernelStore
        except ImportError as e:
            raise StoreConfigError(
                url, "open_kernel_store", f"install kcr-kernels[redis] for Redis stores ({e})"
            ) from None
        return RedisKernelStore(
            url, state_ttl=state_ttl, max_state_bytes=max_state_bytes, timeout=timeout
        )
    if scheme == "sqlite":
        from .sqlite_kernel_store import SqliteKernelStore

        return SqliteKernelStore(
            url, state_ttl=state_ttl, max_state_bytes=max_state_bytes, timeout=timeout
        )
    raise StoreConfigError(
        url, "open_kernel_store", "unsupported scheme: use redis://... or sqlite:///abs/path"
    )


def open_file_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    create_bucket: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> FileStore:
    """Open the file store at ``url`` (no I/O happens until the first call).

    ``s3://bucket[/prefix]`` → S3 API (``endpoint_url`` for MinIO/Ceph/moto;
    unset arguments fall back to the usual ``AWS_*`` environment variables and
    boto3 config; ``create_bucket=True`` creates a missing bucket on first
    use; ``connect_timeout``/``read_timeout`` in seconds bound every request,
    each tried at most twice). ``file:///abs/path`` → a local folder, one subfolder per kernel. The
    S3 client needs ``kcr-kernels[s3]``.
    """
    scheme = _scheme(url, "open_file_store")
    if scheme == "s3":
        try:
            from .s3_file_store import S3FileStore
        except ImportError as e:
            raise StoreConfigError(
                url, "open_file_store", f"install kcr-kernels[s3] for S3 stores ({e})"
            ) from None
        return S3FileStore(
            url,
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            create_bucket=create_bucket,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    if scheme == "file":
        from .local_file_store import LocalFileStore

        return LocalFileStore(url)
    raise StoreConfigError(
        url, "open_file_store", "unsupported scheme: use s3://bucket/prefix or file:///abs/path"
    )

"""File store on S3 or any S3-compatible service (MinIO, Ceph RGW): ``s3://bucket/prefix``.

Layout::

    {prefix}/{kernel_id}/{path}     one object per file, user metadata
                                    x-amz-meta-sha256 (hex) and x-amz-meta-mtime (epoch seconds)
    {prefix}/.kcr-uploads/{uuid}    multipart uploads in progress (kernel ids never
                                    start with '.', so this never collides with a kernel)

Small files (under one part, 8 MiB) are one ``PutObject``. Larger files are
streamed as a multipart upload to a temporary key, then copied server-side
onto the final key with their sha256 as metadata (S3 metadata must be known
when an upload starts, the hash only at its end) and the temporary object is
deleted. Readers therefore only ever see complete files with their hash.
A bucket lifecycle rule "abort incomplete multipart uploads after 1 day"
(and expiring ``{prefix}/.kcr-uploads/``) cleans up after a crashed gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import mimetypes
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .errors import (
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from .file_store import FileEntry, FileStore
from .keys import validate_kernel_id, validate_path

T = TypeVar("T")

PART_SIZE = 8 << 20  # S3 minimum is 5 MiB (except the last part)
MAX_SINGLE_COPY = 5 << 30  # CopyObject limit; larger objects use a multipart copy
UPLOADS = ".kcr-uploads"
_NETWORK_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_UNAVAILABLE = {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """Return ``(bucket, prefix)`` of ``s3://bucket[/prefix]`` (prefix without outer '/')."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StoreConfigError(url, "open_file_store", "expected s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


class S3FileStore(FileStore):
    """:class:`FileStore` on an S3 API through boto3.

    Credentials, region and endpoint come from the arguments, else from
    boto3's usual sources (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL``, profiles, instance roles). With an explicit endpoint
    (MinIO, Ceph) path-style addressing is used. ``create_bucket=True`` creates
    the bucket on first use if it is missing; otherwise a missing bucket is a
    :class:`StoreError` saying so.

    boto3 is blocking; its calls run on this store's own thread pool
    (``max_workers`` threads) rather than the loop's default executor, so that
    the per-file HEAD requests of ``list`` cannot starve other components'
    ``asyncio.to_thread`` calls.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        part_size: int = PART_SIZE,
        max_workers: int = 16,
    ):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        if part_size < 5 << 20:
            raise StoreConfigError(url, "open_file_store", "part_size must be at least 5 MiB")
        self.part_size = part_size
        self._create_bucket = create_bucket
        self._bucket_checked = False
        self._bucket_lock = asyncio.Lock()
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max_workers,
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # S3-compatible services do not all accept the newer default CRC checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        try:
            self._s3 = session.client("s3", endpoint_url=endpoint_url, config=config)
        except (BotoCoreError, ValueError) as e:
            raise StoreConfigError(url, "open_file_store", str(e)) from None
        self._region = self._s3.meta.region_name
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kcr-s3")

    # -- plumbing -------------------------------------------------------
    def _kernel_prefix(self, kernel_id: str) -> str:
        return f"{self.prefix}/{kernel_id}/" if self.prefix else f"{kernel_id}/"

    def _key(self, kernel_id: str, path: str) -> str:
        return self._kernel_prefix(kernel_id) + path

    def _upload_key(self) -> str:
        name = f"{UPLOADS}/{uuid.uuid4().hex}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _translate(self, operation: str, e: Exception) -> StoreError:
        if isinstance(e, StoreError):
            return e
        if isinstance(
            e,
            EndpointConnectionError
            | ConnectTimeoutError
            | ReadTimeoutError
            | ConnectionClosedError,
        ):
            return StoreUnavailable(self.url, operation, f"S3 unreachable: {e}")
        if isinstance(e, NoCredentialsError):
            return StoreConfigError(
                self.url,
                operation,
                "no S3 credentials: pass access_key_id/secret_access_key or set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return StoreError(
                    self.url,
                    operation,
                    f"bucket {self.bucket!r} does not exist (create it, or open the store "
                    "with create_bucket=True)",
                )
            if code in _UNAVAILABLE:
                return StoreUnavailable(self.url, operation, f"S3 error {code}: {e}")
            return StoreError(self.url, operation, f"S3 error {code}: {e}")
        if isinstance(e, BotoCoreError | OSError):
            return StoreUnavailable(self.url, operation, f"S3 client error: {e}")
        return StoreError(self.url, operation, f"{type(e).__name__}: {e}")

    async def _io(self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one blocking boto3 call on the store's thread pool, translating errors."""
        await self._ensure_bucket(operation)
        return await self._io_raw(operation, fn, *args, **kwargs)

    async def _io_raw(
        self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except Exception as e:
            raise self._translate(operation, e) from e

    async def _ensure_bucket(self, operation: str) -> None:
        if self._bucket_checked or not self._create_bucket:
            return
        async with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                await self._io_raw(operation, self._s3.head_bucket, Bucket=self.bucket)
            except StoreError as e:
                cause = e.__cause__
                code = (
                    str(cause.response.get("Error", {}).get("Code", ""))
                    if isinstance(cause, ClientError)
                    else ""
                )
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                kwargs: dict[str, Any] = {"Bucket": self.bucket}
                if self._region and self._region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
                try:
                    await self._io_raw(operation, self._s3.create_bucket, **kwargs)
                except StoreError as ce:
                    if "BucketAlreadyOwnedByYou" not in str(ce):
                        raise
            self._bucket_checked = True

    @staticmethod
    def _code(e: StoreError) -> str:
        cause = e.__cause__
        if isinstance(cause, ClientError):
            return str(cause.response.get("Error", {}).get("Code", ""))
        return ""

    async def _head(self, operation: str, key: str) -> dict | None:
        try:
            return await self._io(operation, self._s3.head_object, Bucket=self.bucket, Key=key)
        except StoreError as e:
            if self._code(e) in _NOT_FOUND:
                return None
            raise

    # -- ping -----------------------------------------------------------
    async def ping(self) -> None:
        """List at most one key of the prefix: refused or timed out → StoreUnavailable;
        an answer that is not S3's (an HTML page, a bare HTTP error), a missing bucket or
        refused credentials → StoreConfigError, one line saying which."""
        op = "ping()"
        endpoint = self._s3.meta.endpoint_url
        try:
            await self._ensure_bucket(op)
            answer = await self._io_raw(
                op, self._s3.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1
            )
        except StoreUnavailable as e:
            cause = e.__cause__
            if isinstance(cause, _NETWORK_ERRORS) or not isinstance(cause, BotoCoreError):
                raise
            raise StoreConfigError(
                self.url, op, f"the endpoint {endpoint} answered, but not as an S3 API ({cause})"
            ) from None
        except StoreConfigError:
            raise
        except StoreError as e:
            code = self._code(e)
            if not code or code.isdigit():  # an HTTP status without an S3 error code
                cause = e.__cause__
                status = (
                    cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", code)
                    if isinstance(cause, ClientError)
                    else code
                )
                raise StoreConfigError(
                    self.url,
                    op,
                    f"the endpoint {endpoint} answered HTTP {status} without an S3 error: "
                    "is it an S3 API?",
                ) from None
            raise StoreConfigError(self.url, op, e.detail) from None
        if "Name" not in answer and "KeyCount" not in answer:
            raise StoreConfigError(
                self.url, op, f"the endpoint {endpoint} answered, but not as an S3 API"
            )

    # -- list -----------------------------------------------------------
    def _list_objects_sync(self, prefix: str) -> list[dict]:
        objects: list[dict] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
        return objects

    async def _objects(self, operation: str, kernel_id: str) -> list[tuple[str, dict]]:
        """``(relative path, listing entry)`` of every valid file of the kernel."""
        prefix = self._kernel_prefix(kernel_id)
        found = []
        for obj in await self._io(operation, self._list_objects_sync, prefix):
            rel = obj["Key"][len(prefix) :]
            try:
                validate_path(rel)
            except InvalidPath:
                continue  # folder markers and names written by other tools
            found.append((rel, obj))
        return found

    async def list(self, kernel_id: str) -> list[FileEntry]:
        op = f"list({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        objects = await self._objects(op, kernel_id)
        # ListObjectsV2 does not return user metadata: one HEAD per file (no download)
        heads = await asyncio.gather(
            *(self._head(op, self._key(kernel_id, rel)) for rel, _obj in objects)
        )
        entries = []
        for (rel, obj), head in zip(objects, heads, strict=True):
            if head is None:
                continue  # deleted between LIST and HEAD
            meta = head.get("Metadata", {})
            try:
                mtime = float(meta["mtime"])
            except (KeyError, ValueError):
                mtime = obj["LastModified"].timestamp()
            entries.append(FileEntry(rel, int(head["ContentLength"]), mtime, meta.get("sha256")))
        entries.sort(key=lambda e: e.path)
        return entries

    async def usage(self, kernel_id: str) -> int:
        op = f"usage({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        return sum(int(obj["Size"]) for _rel, obj in await self._objects(op, kernel_id))

    # -- read -----------------------------------------------------------
    async def read(
        self, kernel_id: str, path: str, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        op = f"read({kernel_id!r}, {path!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        validate_path(path, url=self.url, operation=op)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        try:
            response = await self._io(
                op, self._s3.get_object, Bucket=self.bucket, Key=self._key(kernel_id, path)
            )
        except StoreError as e:
            if self._code(e) in _NOT_FOUND:
                raise FileNotFound(self.url, op, "no such file") from None
            raise
        body = response["Body"]
        try:
            while chunk := await self._io_raw(op, body.read, chunk_size):
                yield chunk
        finally:
            body.close()

    # -- write ----------------------------------------------------------
    async def _check_no_conflict(self, op: str, kernel_id: str, path: str) -> None:
        """Refuse a path whose parent is a file, or which is itself a folder (like a filesystem)."""
        segments = path.split("/")
        ancestors = ["/".join(segments[:i]) for i in range(1, len(segments))]
        heads = await asyncio.gather(*(self._head(op, self._key(kernel_id, a)) for a in ancestors))
        below = await self._io(
            op,
            self._s3.list_objects_v2,
            Bucket=self.bucket,
            Prefix=self._key(kernel_id, path) + "/",
            MaxKeys=1,
        )
        if any(h is not None for h in heads) or below.get("KeyCount", 0):
            raise InvalidPath(
                self.url, op, "a file and a folder cannot share a name in the workspace"
            )

    async def write(
        self,
        kernel_id: str,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int | None = None,
        mtime: float | None = None,
    ) -> FileEntry:
        op = f"write({kernel_id!r}, {path!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        validate_path(path, url=self.url, operation=op)
        await self._check_no_conflict(op, kernel_id, path)
        key = self._key(kernel_id, path)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        h = hashlib.sha256()
        size = 0
        # Chunks wait here until they make a part; a part is at least part_size bytes (it is
        # the join of whole chunks, so it can be larger: S3 only needs >= 5 MiB per part).
        pending: list[bytes] = []
        pending_size = 0
        upload_key: str | None = None
        upload_id: str | None = None
        parts: list[dict] = []

        async def send_part(data: bytes) -> None:
            nonlocal upload_key, upload_id
            if upload_id is None:
                upload_key = self._upload_key()
                created = await self._io(
                    op, self._s3.create_multipart_upload, Bucket=self.bucket, Key=upload_key
                )
                upload_id = created["UploadId"]
            number = len(parts) + 1
            sent = await self._io(
                op,
                self._s3.upload_part,
                Bucket=self.bucket,
                Key=upload_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})

        completed = False
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLarge(self.url, op, size, max_bytes)
                h.update(chunk)
                pending.append(bytes(chunk))
                pending_size += len(chunk)
                if pending_size >= self.part_size:
                    part = b"".join(pending)
                    pending.clear()
                    pending_size = 0
                    await send_part(part)
                    del part
            mtime = time.time() if mtime is None else float(mtime)
            metadata = {"sha256": h.hexdigest(), "mtime": repr(mtime)}
            if upload_id is None:
                await self._io(
                    op,
                    self._s3.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=b"".join(pending),
                    Metadata=metadata,
                    ContentType=content_type,
                )
            else:
                if pending:
                    await send_part(b"".join(pending))
                    pending.clear()
                await self._io(
                    op,
                    self._s3.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=upload_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                completed = True
                await self._copy(op, upload_key, key, size, metadata, content_type)
        except BaseException:
            if upload_id is not None and not completed:
                with contextlib.suppress(Exception):
                    await self._io_raw(
                        op,
                        self._s3.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload_key,
                        UploadId=upload_id,
                    )
            raise
        finally:
            if completed:
                with contextlib.suppress(Exception):
                    await self._io_raw(
                        op, self._s3.delete_object, Bucket=self.bucket, Key=upload_key
                    )
        return FileEntry(path, size, mtime, metadata["sha256"])

    async def _copy(
        self, op: str, source: str, key: str, size: int, metadata: dict, content_type: str
    ) -> None:
        extra = {"Metadata": metadata, "MetadataDirective": "REPLACE", "ContentType": content_type}
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= MAX_SINGLE_COPY:
            await self._io(
                op,
                self._s3.copy_object,
                Bucket=self.bucket,
                Key=key,
                CopySource=copy_source,
                **extra,
            )
        else:  # boto3's managed copy does the multipart copy (UploadPartCopy)
            await self._io(op, self._s3.copy, copy_source, self.bucket, key, ExtraArgs=extra)

    # -- delete ---------------------------------------------------------
    async def delete(self, kernel_id: str, path: str) -> None:
        op = f"delete({kernel_id!r}, {path!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        validate_path(path, url=self.url, operation=op)
        await self._io(
            op, self._s3.delete_object, Bucket=self.bucket, Key=self._key(kernel_id, path)
        )

    async def delete_all(self, kernel_id: str) -> None:
        op = f"delete_all({kernel_id!r})"
        validate_kernel_id(kernel_id, url=self.url, operation=op)
        prefix = self._kernel_prefix(kernel_id)
        objects = await self._io(op, self._list_objects_sync, prefix)
        keys = [{"Key": o["Key"]} for o in objects]
        for start in range(0, len(keys), 1000):
            result = await self._io(
                op,
                self._s3.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": keys[start : start + 1000], "Quiet": True},
            )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StoreError(
                    self.url, op, f"could not delete {first.get('Key')}: {first.get('Message')}"
                )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._s3.close()

"""The kcr gateway's files API, as the Jupyter Server's folder sync calls it.

:class:`GatewayFiles` lists, downloads, uploads and deletes one kernel's files through
``/api/kernels/{id}/files[/{path}]`` on the gateway Jupyter Server uses (its
``GatewayClient``: URL, auth headers, TLS options). Bodies stream both ways: a download is
written chunk by chunk to the destination the caller gives, an upload reads its file in
chunks. Every failure is a :class:`GatewayFilesError` whose ``status`` is the HTTP status
(``599`` for a gateway that cannot be reached) and whose message names the cause.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

CHUNK = 1 << 20


class GatewayFilesError(Exception):
    """A files API call failed: ``status`` (599 = no answer) and ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def unavailable(self) -> bool:
        """The gateway or its file store is down (retry later), not a refusal."""
        return self.status in (502, 503, 504, 599)


@dataclass(frozen=True)
class RemoteFile:
    """One of the kernel's files as the gateway lists it."""

    path: str
    size: int
    sha256: str | None


class GatewayFiles:
    """Files API calls for any kernel on one gateway.

    ``base_url`` is the gateway (with its base path), ``connection_args`` a callable that
    returns tornado ``HTTPRequest`` keyword arguments (headers with the auth token, TLS);
    Jupyter Server's ``GatewayClient.load_connection_args`` is exactly that.
    """

    def __init__(
        self,
        base_url: str,
        connection_args: Callable[..., dict[str, Any]],
        *,
        kernels_endpoint: str = "/api/kernels",
        timeout: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.kernels_endpoint = "/" + kernels_endpoint.strip("/")
        self.connection_args = connection_args
        self.timeout = timeout
        self.client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 50)

    def close(self) -> None:
        self.client.close()

    def _url(self, kernel_id: str, path: str | None = None) -> str:
        url = f"{self.base_url}{self.kernels_endpoint}/{quote(kernel_id, safe='')}/files"
        return url if path is None else f"{url}/{quote(path, safe='/')}"

    def _request(self, url: str, method: str = "GET", **kwargs: Any) -> HTTPRequest:
        args = self.connection_args()
        args.pop("request_timeout", None)
        args.pop("connect_timeout", None)
        return HTTPRequest(
            url,
            method=method,
            connect_timeout=min(self.timeout, 10.0),
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
            **{**args, **kwargs},
        )

    async def _fetch(self, request: HTTPRequest):
        try:
            return await self.client.fetch(request)
        except HTTPClientError as e:
            raise GatewayFilesError(e.code, _reason(e)) from None
        except (OSError, TimeoutError) as e:
            raise GatewayFilesError(599, f"the gateway cannot be reached: {e}") from None

    async def list(
        self, kernel_id: str, unless: str | None = None
    ) -> tuple[dict[str, RemoteFile] | None, str | None, str | None]:
        """``(files, sync_error, version)``: the kernel's stored files after the gateway
        synced the live pod, the gateway's ``sync_error`` (files of the pod not saved yet)
        and the listing's ``version``. With ``unless`` = the version of an earlier listing,
        ``files`` is ``None`` when nothing changed since (the gateway answers that at once)."""
        url = self._url(kernel_id)
        if unless:
            url += "?unless=" + quote(unless, safe="")
        response = await self._fetch(self._request(url))
        try:
            body = json.loads(response.body)
            if body.get("unchanged") and unless:
                return None, None, unless
            files = {
                f["path"]: RemoteFile(f["path"], int(f["size"]), f.get("sha256"))
                for f in body["files"]
            }
        except (ValueError, KeyError, TypeError) as e:
            raise GatewayFilesError(
                502, f"the gateway's file listing is not what kcr-gateway sends: {e}"
            ) from None
        return files, body.get("sync_error"), body.get("version")

    async def download(self, kernel_id: str, path: str, write: Callable[[bytes], Any]) -> None:
        """Stream the file's bytes into ``write`` as they arrive (tornado hands over chunks of
        at most 64 KiB; a local write of one is short, so it is done on the loop: the memory
        held is one chunk, whatever the file's size)."""
        request = self._request(self._url(kernel_id, path), streaming_callback=write)
        await self._fetch(request)

    async def upload(self, kernel_id: str, path: str, fd: int, size: int) -> RemoteFile:
        """Stream ``size`` bytes from ``fd`` (read in a thread) to the kernel's ``path``."""

        async def producer(write):
            left = size
            while left > 0:
                chunk = await asyncio.to_thread(os.read, fd, min(CHUNK, left))
                if not chunk:
                    raise GatewayFilesError(409, f"{path} got shorter while it was read")
                left -= len(chunk)
                await write(chunk)

        request = self._request(
            self._url(kernel_id, path),
            "PUT",
            body_producer=producer,
            headers={**self.connection_args().get("headers", {}), "Content-Length": str(size)},
        )
        response = await self._fetch(request)
        try:
            model = json.loads(response.body)
            return RemoteFile(model["path"], int(model["size"]), model.get("sha256"))
        except (ValueError, KeyError, TypeError) as e:
            raise GatewayFilesError(502, f"the gateway's upload answer is odd: {e}") from None

    async def delete(self, kernel_id: str, path: str) -> None:
        """Delete the kernel's file (a missing one is fine)."""
        try:
            await self._fetch(self._request(self._url(kernel_id, path), "DELETE"))
        except GatewayFilesError as e:
            if e.status != 404:
                raise


def _reason(e: HTTPClientError) -> str:
    """The gateway's JSON ``message`` (or the HTTP reason) of an error answer."""
    body = e.response.body if e.response is not None else b""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return message or f"HTTP {e.code} {e.message}"

"""The gateway's REST calls the bridge and the provisioner make, as one async client.

:class:`GatewayAPI` speaks to a kcr (or Jupyter Kernel Gateway compatible)
gateway with tornado's ``AsyncHTTPClient``. It is used by the bridge kernel
(attach, interrupt, delete) and by the ``kcr-provisioner`` inside the client
process (create before launch, delete at cleanup), so it must work in any
process a client runs in, including ``multiprocessing`` children forked from a
process that already used it:

* the HTTP client is created lazily, one per (process, event loop), never
  at import time and never shared with tornado's per-loop singleton;
* host names are resolved without asyncio's default executor (a numeric
  address needs no lookup; a name is looked up in
  :mod:`kcr_kernels.forksafe`'s per-process threads).

Errors are typed: :class:`GatewayError` (with ``code``, the HTTP status or
``None`` when the gateway was unreachable) and its subclass
:class:`KernelGone` for a kernel the gateway does not have (404).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import Resolver

from ..forksafe import run_in_thread


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached; the message says which call and why."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class KernelGone(GatewayError):
    """The gateway no longer knows the kernel (it was shut down or culled)."""


class ForkSafeResolver(Resolver):
    """Numeric addresses as they are; names through :func:`~kcr_kernels.forksafe.run_in_thread`."""

    async def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC):
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            af = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            return [(af, (str(address), port))]
        infos = await run_in_thread(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
        return [(fam, addr) for fam, _type, _proto, _name, addr in infos]


class GatewayAPI:
    """The few REST calls made on a gateway; see the module docstring.

    ``timeout`` bounds every call; :meth:`create_kernel` may be given a longer
    one (a cold pod start). :meth:`close` releases the HTTP client.
    """

    def __init__(self, url: str, token: str = "", *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http: AsyncHTTPClient | None = None
        self._http_owner: tuple[int, asyncio.AbstractEventLoop] | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def kernel_url(self, kernel_id: str, suffix: str = "") -> str:
        return f"{self.url}/api/kernels/{quote(kernel_id, safe='')}{suffix}"

    def channels_url(self, kernel_id: str, session_id: str = "") -> str:
        """The kernel's WebSocket URL; ``session_id`` names the client's session (Jupyter
        Server logs "No session ID specified" for a socket without one)."""
        query = f"?session_id={quote(session_id, safe='')}" if session_id else ""
        return "ws" + self.kernel_url(kernel_id, "/channels")[len("http") :] + query

    def _client(self) -> AsyncHTTPClient:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._http is None or self._http_owner != owner:
            if self._http is not None and self._http_owner[0] == owner[0]:
                self._http.close()
            self._http = AsyncHTTPClient(force_instance=True, resolver=ForkSafeResolver())
            self._http_owner = owner
        return self._http

    def close(self) -> None:
        if self._http is not None and self._http_owner[0] == os.getpid():
            self._http.close()
        self._http = self._http_owner = None

    async def call(
        self, method: str, url: str, payload: dict | None = None, timeout: float | None = None
    ) -> dict | None:
        body = json.dumps(payload).encode() if payload is not None else None
        if body is None and method == "POST":
            body = b""
        timeout = self.timeout if timeout is None else timeout
        request = HTTPRequest(
            url,
            method=method,
            body=body,
            headers={**self.headers(), "Content-Type": "application/json"},
            request_timeout=timeout,
            connect_timeout=min(timeout, 10.0),
        )
        try:
            response = await self._client().fetch(request)
        except HTTPClientError as e:
            if e.code == 404 and "/api/kernels/" in url:
                raise KernelGone(f"the gateway has no kernel at {url}", 404)
            code = None if e.code == 599 else e.code
            raise GatewayError(f"{method} {url} failed: {reason(e)}", code)
        except OSError as e:
            raise GatewayError(f"{method} {url} failed: the gateway is unreachable ({e})")
        return json.loads(response.body) if response.body else None

    async def create_kernel(
        self, name: str, env: dict[str, str], timeout: float | None = None
    ) -> str:
        payload = {"name": name, "env": env}
        model = await self.call("POST", f"{self.url}/api/kernels", payload, timeout)
        return model["id"]

    async def kernel_model(self, kernel_id: str) -> dict:
        return await self.call("GET", self.kernel_url(kernel_id))

    async def interrupt(self, kernel_id: str) -> None:
        await self.call("POST", self.kernel_url(kernel_id, "/interrupt"))

    async def delete_kernel(self, kernel_id: str, timeout: float | None = None) -> None:
        """Delete the kernel; one the gateway does not have is already deleted."""
        try:
            await self.call("DELETE", self.kernel_url(kernel_id), timeout=timeout)
        except KernelGone:
            pass


def reason(e: HTTPClientError) -> str:
    """The gateway's reason for an HTTP error: its JSON ``message`` or ``reason``."""
    detail = ""
    if e.response is not None and e.response.body:
        try:
            body = json.loads(e.response.body)
            detail = body.get("message") or body.get("reason") or ""
        except ValueError:
            detail = e.response.body[:200].decode(errors="replace")
    return f"HTTP {e.code} {detail}".strip() if e.code != 599 else str(e)

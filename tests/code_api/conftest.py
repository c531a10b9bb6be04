"""Fixtures: a real kcr-gateway with sandboxed pods, and a small client of the code API."""

from __future__ import annotations

import json
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.gateway.conftest import start_gateway

KEY_A = "key-a-" + "a" * 20
KEY_B = "key-b-" + "b" * 20
KEY_SLOW = "key-slow-" + "s" * 20  # rate=2 per minute
KEY_FEW = "key-few-" + "f" * 20  # sessions=1


def keys_file(tmp_path) -> str:
    """A keys file with hashed and plain keys and per-key limits."""
    import hashlib

    path = tmp_path / "code-api-keys.txt"
    hashed_b = "sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()
    path.write_text(
        f"# code API keys\n{hashed_b} name=bob\n{KEY_SLOW} rate=2\n{KEY_FEW} sessions=1\n"
        "not-a-key rate=fast\n"
    )
    return str(path)


async def code_api_gateway(tmp_path, *, pools=None, code_api=None, manager=None, **traits):
    """A gateway with the code API on; ``code_api`` sets KCRCodeAPI traits."""
    return await start_gateway(
        tmp_path,
        manager=manager,
        classes={"KCRCodeAPI": code_api or {}},
        pools=pools or {"python": {"warm": 2}},
        **traits,
    )


class Result:
    def __init__(self, code: int, body: bytes, headers):
        self.code, self.body, self.headers = code, body, headers

    def json(self):
        return json.loads(self.body)


async def call(
    base: str,
    method: str,
    path: str,
    body=None,
    key: str | None = KEY_A,
    headers: dict | None = None,
    timeout: float = 120,
) -> Result:
    """One HTTP request to the code API (errors are results too)."""
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["x-api-key"] = key
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        all_headers.setdefault("Content-Type", "application/json")
    if body is None and method in ("POST", "PUT"):
        body = b""
    request = HTTPRequest(
        base + path, method=method, body=body, headers=all_headers, request_timeout=timeout
    )
    try:
        r = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        if e.response is None:
            raise
        r = e.response
    return Result(r.code, r.body, r.headers)


async def execute(base: str, code: str, lang: str = "py", key: str = KEY_A, **fields) -> dict:
    """``POST /v1/exec`` that must succeed (200); its JSON."""
    r = await call(base, "POST", "/v1/exec", {"lang": lang, "code": code, **fields}, key=key)
    assert r.code == 200, (r.code, r.body)
    return r.json()


def multipart(parts: list[tuple[str, str, bytes]], fields: dict | None = None) -> tuple:
    """(body, headers) of a multipart/form-data request: parts are (field, filename, bytes)."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for field, filename, data in parts:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}

"""HTTP routes of the code-interpreter API (LibreChat's / KubeCodeRun's), under ``prefix``.

==========================================  =================================================
``POST   {prefix}/exec``                    run code: ``{lang, code, args?, session_id?,
                                            files?}`` → ``{session_id, stdout, stderr, files}``
``POST   {prefix}/upload``                  multipart ``file``/``files`` (+ ``session_id``,
                                            ``entity_id``) → ``{message, session_id, files}``
``GET    {prefix}/files/{session_id}``      the session's files (``?detail=simple|summary``)
``GET    {prefix}/download/{sid}/{fid}``    one file, streamed
``DELETE {prefix}/files/{sid}/{fid}``       delete one file
``GET    {prefix}/health``                  ``{"status": "healthy", ...}`` (no key needed)
==========================================  =================================================

Auth: the ``x-api-key`` header (:mod:`.keys`), independent of the Jupyter token. With no
key configured the API is open (one anonymous owner) only when the gateway itself has no
authentication; a gateway with a token but no code-API keys refuses every call (401) and
says which option to set. Every error is JSON ``{"error", "reason", "message"}``, a rate
limit also ``retry_after_seconds`` (429, with ``Retry-After``). Request bodies are read
up to their limit and no further (413 past it).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado import httputil, web

from .. import __version__
from .config import KCRCodeAPI
from .errors import BadRequest, CodeAPIError, NotFound, RateLimited, TooLarge, Unauthorized
from .keys import ApiKey, KeyRing
from .limits import RateLimiter
from .sessions import CodeSessions, content_type

#: The owner of sessions when no key is configured (open API on a gateway without auth).
ANONYMOUS = ApiKey("sha256:" + "0" * 64, name="anonymous")


class CodeAPI:
    """What the handlers share: sessions, keys, rate buckets and the options."""

    def __init__(self, config: KCRCodeAPI, sessions: CodeSessions, keys: KeyRing, auth_on: bool):
        self.config = config
        self.sessions = sessions
        self.keys = keys
        self.auth_on = auth_on
        self.rates = RateLimiter()

    def authenticate(self, presented: str | None) -> ApiKey:
        if not self.keys.enabled:
            if self.auth_on:
                raise Unauthorized(
                    "the code API has no keys configured on this gateway: set "
                    "--KCRGateway.code_api_keys or --KCRGateway.code_api_keys_file"
                )
            return ANONYMOUS
        if not presented:
            raise Unauthorized("an API key is required: send it in the x-api-key header")
        key = self.keys.lookup(presented)
        if key is None:
            raise Unauthorized("the x-api-key is not valid")
        rate = key.rate if key.rate is not None else self.config.rate_limit
        retry = self.rates.allow(key.digest, rate)
        if retry:
            raise RateLimited(retry, rate)
        return key


class CodeAPIHandler(web.RequestHandler):
    """Base: key check in ``prepare``, bounded body, JSON answers and errors."""

    body_limit = 0  #: bytes of body accepted (0: none expected)
    needs_key = True

    def initialize(self, api: CodeAPI) -> None:
        self.api = api
        self.key: ApiKey | None = None
        self._body = bytearray()
        self._too_large = False

    def prepare(self) -> None:
        if self.needs_key:
            self.key = self.api.authenticate(self.request.headers.get("x-api-key"))
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            raise TooLarge(f"the request body is over the limit of {self.body_limit} bytes")
        self.request.connection.set_max_body_size(max(self.body_limit, 1) * 2 + (1 << 20))

    def data_received(self, chunk: bytes) -> None:  # with @stream_request_body
        if len(self._body) + len(chunk) > self.body_limit:
            self._too_large = True
            return
        self._body.extend(chunk)

    def body(self) -> bytes:
        if self._too_large:
            raise TooLarge(f"the request body is over the limit of {self.body_limit} bytes")
        return bytes(self._body)

    def json_body(self) -> dict:
        try:
            value = json.loads(self.body() or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise BadRequest("the body must be a JSON object")
        return value

    def answer(self, value, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        reason = httputil.responses.get(status_code, "Error")
        body: dict = {"error": "error", "reason": reason, "message": reason}
        if isinstance(exc, CodeAPIError):
            body.update(error=exc.code, message=str(exc))
            if isinstance(exc, RateLimited):
                body["retry_after_seconds"] = exc.retry_after
                self.set_header("Retry-After", str(exc.retry_after))
        elif isinstance(exc, web.HTTPError):
            body.update(error="http_error", message=exc.log_message or reason)
        elif exc is not None:
            body.update(error="internal", message="Internal error in the gateway; see its log")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, CodeAPIError):
            self.api.sessions.log.info(
                "code API %s %s: %d %s", self.request.method, self.request.path, value.status, value
            )
            return
        super().log_exception(typ, value, tb)


@web.stream_request_body
class ExecHandler(CodeAPIHandler):
    """``POST /exec``."""

    def prepare(self) -> None:
        self.body_limit = self.api.config.max_code_bytes + (1 << 20)
        super().prepare()

    async def post(self) -> None:
        body = self.json_body()
        result = await self.api.sessions.exec(self.key, body, self.api.config.max_sessions)
        self.answer(result)


@web.stream_request_body
class UploadHandler(CodeAPIHandler):
    """``POST /upload`` (multipart/form-data)."""

    def prepare(self) -> None:
        self.body_limit = self.api.config.max_upload_bytes
        super().prepare()

    async def post(self) -> None:
        ctype = self.request.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            raise BadRequest("the upload must be multipart/form-data with a 'file' field")
        _value, boundary = httputil._parse_header(ctype)
        if not boundary.get("boundary"):
            raise BadRequest("the multipart Content-Type has no boundary")
        body = self.body()
        arguments: dict = {}
        files: dict = {}
        try:
            httputil.parse_multipart_form_data(
                boundary["boundary"].encode("latin-1"), body, arguments, files
            )
        except httputil.HTTPInputError as e:
            raise BadRequest(f"the multipart body is malformed: {e}") from None
        uploads = files.get("file", []) + files.get("files", [])
        if not uploads:
            if files or arguments or not body:
                raise BadRequest("no file in the upload: send it in a 'file' or 'files' field")
            raise BadRequest("the multipart body is malformed (no part could be read)")
        if len(uploads) > self.api.config.max_files:
            raise TooLarge(
                f"{len(uploads)} files in one upload, over the limit of {self.api.config.max_files}"
            )
        named = []
        for upload in uploads:
            name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if not name:
                raise BadRequest("an uploaded file has no file name")
            named.append((name, upload.body))
        session_id = (arguments.get("session_id") or [b""])[0].decode("utf-8", "replace")
        result = await self.api.sessions.upload(
            self.key, session_id or None, named, self.api.config.max_sessions
        )
        self.answer(result)


class FilesHandler(CodeAPIHandler):
    """``GET /files/{session_id}``."""

    async def get(self, session_id: str) -> None:
        detail = self.get_query_argument("detail", "full")
        self.answer(await self.api.sessions.list_files(self.key, session_id, detail))


class FileHandler(CodeAPIHandler):
    """``DELETE /files/{session_id}/{file_id}``."""

    async def delete(self, session_id: str, file_id: str) -> None:
        path = await self.api.sessions.delete_file(self.key, session_id, file_id)
        self.answer({"message": "success", "session_id": session_id, "id": file_id, "name": path})


class DownloadHandler(CodeAPIHandler):
    """``GET /download/{session_id}/{file_id}``: the bytes, streamed."""

    async def get(self, session_id: str, file_id: str) -> None:
        path, chunks = await self.api.sessions.open_file(self.key, session_id, file_id)
        name = path.rsplit("/", 1)[-1]
        fallback = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
        self.set_header("Content-Type", content_type(path))
        utf8 = quote(name, safe="")
        disposition = f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{utf8}"
        self.set_header("Content-Disposition", disposition)
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        except Exception as e:  # headers are out: cut the response short
            self.api.sessions.log.error(
                "code API download %s/%s failed: %s", session_id, file_id, e
            )
            self.request.connection.close()
            return
        self.finish()


class HealthHandler(CodeAPIHandler):
    """``GET /health``: no key needed."""

    needs_key = False

    def get(self) -> None:
        sessions = self.api.sessions
        self.answer(
            {
                "status": "healthy",
                "service": "kcr-gateway",
                "version": __version__,
                "languages": sessions.codes(),
            }
        )


class UnknownHandler(CodeAPIHandler):
    """Any other path under the prefix: a JSON 404."""

    needs_key = False

    def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}")


def code_api_handlers(prefix: str, api: CodeAPI) -> list[tuple]:
    """Route tuples (without ``base_url``) for the code API under ``prefix``."""
    prefix = "/" + prefix.strip("/")
    args = {"api": api}
    return [
        (rf"{prefix}/exec/?", ExecHandler, args),
        (rf"{prefix}/upload/?", UploadHandler, args),
        (rf"{prefix}/files/(?P<session_id>[^/]+)/?", FilesHandler, args),
        (rf"{prefix}/files/(?P<session_id>[^/]+)/(?P<file_id>[^/]+)/?", FileHandler, args),
        (rf"{prefix}/download/(?P<session_id>[^/]+)/(?P<file_id>[^/]+)/?", DownloadHandler, args),
        (rf"{prefix}/health/?", HealthHandler, args),
        (rf"{prefix}/.*", UnknownHandler, args),
    ]

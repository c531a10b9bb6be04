"""The code API's errors: each has an HTTP status and a short ``error`` code.

Handlers answer every one as JSON ``{"error": code, "reason": ..., "message": ...}``
(``reason``/``message`` as on the rest of the gateway); a rate limit adds
``retry_after_seconds`` (and a ``Retry-After`` header), as LibreChat's client reads it.
"""

from __future__ import annotations

from tornado import web


class CodeAPIError(web.HTTPError):
    """A request the API refuses; ``str(error)`` names the problem for the client.

    A ``tornado.web.HTTPError``, so tornado answers it with its status (``write_error``
    of :class:`~.handlers.CodeAPIHandler` writes the JSON).
    """

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        super().__init__(self.status)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(CodeAPIError):
    status, code = 400, "bad_request"


class Unauthorized(CodeAPIError):
    status, code = 401, "unauthorized"


class NotFound(CodeAPIError):
    """An unknown session or file, or one that belongs to another key (never told apart)."""

    status, code = 404, "not_found"


class TooLarge(CodeAPIError):
    status, code = 413, "too_large"


class LimitReached(CodeAPIError):
    """A key's live-session limit (429, like its rate limit: retrying later can succeed)."""

    status, code = 429, "session_limit"


class RateLimited(CodeAPIError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after: int, rate: int):
        super().__init__(
            f"more than {rate} calls per minute for this key; retry in {retry_after} s"
        )
        self.retry_after = retry_after


class Unavailable(CodeAPIError):
    status, code = 503, "unavailable"

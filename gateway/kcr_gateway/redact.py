"""No token in any log line: redaction applied to every log record of the process.

Clients may send their token in the URL (``?token=…``) or a header (``Authorization:
token …``, ``Bearer …``), and both end up in log lines: tornado's access log prints the
URL of every 4xx, error messages quote request headers. :func:`install` wraps the
logging module's record factory, so every record — whatever logger made it and
whichever handler later writes it (the app's console, a file, pytest's capture) — has
its message (arguments already merged in) and its traceback text redacted:

* ``token=<value>`` (also ``access_token``, ``api_key``, ``_xsrf``) → ``token=[redacted]``
  in query strings, form bodies and repr()s;
* ``Authorization: <scheme> <value>`` (also ``X-Api-Key``) → the value replaced, in
  header dumps and in dict reprs (``'Authorization': 'token …'``);
* exact secrets registered with :func:`add_secret` (the shared auth token, the Hub API
  token), wherever they appear.

The cost is one regex pass per log record. Installing twice is a no-op.
"""

from __future__ import annotations

import logging
import re
import threading

REDACTED = "[redacted]"

_QUERY = re.compile(r"(?i)(\b(?:token|access_token|api_key|_xsrf)=)[^&\s'\";,#)]+")
_HEADER = re.compile(
    r"(?i)(\b(?:authorization|x-api-key)['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(token|bearer|basic)(\s+))?[^\s'\",}]+"
)

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def add_secret(value: str) -> None:
    """Redact this exact string wherever it appears in log lines (ignored if short)."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with tokens replaced by ``[redacted]`` (see the module doc)."""
    if not text:
        return text
    text = _QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _HEADER.sub(
        lambda m: m.group(1) + (m.group(2) + m.group(3) if m.group(2) else "") + REDACTED, text
    )
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def install() -> None:
    """Redact every log record made from now on, by any logger (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args, **kwargs) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to the handler to report
                return record
            clean = redact(message)
            if clean != message or record.args:
                record.msg, record.args = clean, ()
            if record.exc_info and record.exc_info[0] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            return record

        logging.setLogRecordFactory(redacting_factory)

"""API keys of the code-interpreter API (``x-api-key``), kept hashed.

Keys come from ``KCRGateway.code_api_keys`` (a list) and ``code_api_keys_file`` (one key
a line). Neither the keys nor the file are kept in clear: each key is hashed with SHA-256
when it is read, and a file line may hold the hash itself (``sha256:<64 hex>``, made with
``printf %s KEY | sha256sum``). A line may add limits for that key::

    # key (or sha256:<hex>)        options
    sha256:9f86d081884c7d65...     rate=120 sessions=20 name=librechat
    my-plain-key                   rate=30

``rate`` is calls per minute, ``sessions`` the most live sessions; a key without them
gets the API's defaults (``KCRCodeAPI.rate_limit``, ``max_sessions``). The file is
re-read when it changes (checked at most once a second). Bad lines are skipped with a
log line that names the line number, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass

_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of ``key``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its hash, an id safe to log and store, and its own limits."""

    digest: str  #: ``sha256:<hex>``
    name: str = ""
    rate: int | None = None  #: calls per minute (None: the API's default)
    sessions: int | None = None  #: live sessions (None: the API's default)

    @property
    def key_id(self) -> str:
        """A short, stable name of the key (the first 12 hex digits of its hash)."""
        return self.name or self.digest[len("sha256:") :][:12]

    @property
    def owner(self) -> str:
        """What the sessions of this key record as their owner."""
        return f"code-api:{self.digest[len('sha256:') :][:16]}"


def parse_line(line: str) -> ApiKey:
    """One keys-file line (comments and blank lines are the caller's); ValueError if bad."""
    fields = line.split()
    secret, options = fields[0], fields[1:]
    match = _HASHED.match(secret)
    digest = f"sha256:{match.group(1).lower()}" if match else hash_key(secret)
    values: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name not in ("rate", "sessions", "name"):
            raise ValueError(f"unknown option {option!r} (use rate=N, sessions=N, name=X)")
        values[name] = value
    try:
        rate = int(values["rate"]) if "rate" in values else None
        sessions = int(values["sessions"]) if "sessions" in values else None
    except ValueError:
        raise ValueError("rate and sessions must be whole numbers") from None
    if (rate is not None and rate < 0) or (sessions is not None and sessions < 0):
        raise ValueError("rate and sessions must be 0 (no limit) or more")
    return ApiKey(digest, values.get("name", ""), rate, sessions)


class KeyRing:
    """The accepted keys; :meth:`lookup` turns a presented key into its :class:`ApiKey`.

    Empty (no key configured): :attr:`enabled` is False and the API decides what that
    means (see :mod:`.handlers`).
    """

    def __init__(self, keys: list[str], keys_file: str = "", log: logging.Logger | None = None):
        self.log = log or logging.getLogger("kcr.code_api")
        self._static = {k.digest: k for k in (parse_line(key) for key in keys if key.strip())}
        self.keys_file = keys_file
        self._from_file: dict[str, ApiKey] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._checked = 0.0
        if keys_file:
            self._read_file(os.stat(keys_file))  # a missing file fails the start

    @property
    def enabled(self) -> bool:
        self._maybe_reload()
        return bool(self._static or self._from_file or self.keys_file)

    def lookup(self, presented: str | None) -> ApiKey | None:
        """The key for the presented secret, or None (unknown, or nothing presented)."""
        if not presented:
            return None
        self._maybe_reload()
        digest = hash_key(presented)
        for known in (self._static, self._from_file):
            for candidate, key in known.items():
                if hmac.compare_digest(candidate, digest):
                    return key
        return None

    def _maybe_reload(self) -> None:
        if not self.keys_file or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        try:
            stat = os.stat(self.keys_file)
        except OSError as e:
            self.log.error("code API keys file %s unreadable: %s", self.keys_file, e.strerror)
            return
        if (stat.st_mtime, stat.st_size) != self._file_stamp:
            self._read_file(stat)

    def _read_file(self, stat: os.stat_result) -> None:
        keys: dict[str, ApiKey] = {}
        with open(self.keys_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = parse_line(line)
            except ValueError as e:
                self.log.error(
                    "code API keys file %s line %d skipped: %s", self.keys_file, number, e
                )
                continue
            keys[key.digest] = key
        self._from_file = keys
        self._file_stamp = (stat.st_mtime, stat.st_size)
        self._checked = time.monotonic()

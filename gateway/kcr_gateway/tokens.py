"""Identities from a token file: hashed tokens, each naming a user and a role.

File format (one identity a line; ``#`` starts a comment; blank lines are ignored)::

    # sha256 of the token            user    role (optional: user | admin)
    sha256:9f86d08188...0f00a08      alice
    sha256:60303ae22b...2b61c42      ops     admin

Only the SHA-256 of each token is stored: make lines with ``kcr-gateway hash-token``
(which also makes a random token). Tokens are random strings of at least 128 bits, so
an unsalted hash is enough: it cannot be guessed back, only matched.

Contract of :func:`parse_token_file`:

* a line that does not parse (no ``sha256:`` prefix, not 64 hex digits, a bad user name,
  an unknown role, extra fields) is skipped, and one log line names the file, the line
  number and what is wrong — never the line's text, which may hold a pasted secret;
* a token hash listed on more than one line is refused on every one of them (an
  error names the lines): which user it stands for is ambiguous, so it opens nothing;
* the result is the same for the same text, whatever the order of the rest.

:class:`TokenFile` re-reads the file when it changes (mtime, size or inode; checked
every ``interval`` seconds off the event loop), so adding or removing a line takes effect
without a restart. A file that disappears or cannot be read grants nothing until it
is back (fail closed), with one log line per change of that condition.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass

ROLES = ("user", "admin")
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True)
class TokenEntry:
    """One identity of the token file."""

    username: str
    admin: bool
    line: int


def hash_token(token: str) -> str:
    """The token file's form of ``token``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_line(token: str, username: str, role: str = "user") -> str:
    """The token file line for ``token``; ValueError for a bad user name or role."""
    if not USERNAME.fullmatch(username):
        raise ValueError(
            f"bad user name {username!r}: letters, digits and . _ @ + - (128 at most), "
            "starting with a letter or digit"
        )
    if role not in ROLES:
        raise ValueError(f"bad role {role!r}: use one of {', '.join(ROLES)}")
    return f"{hash_token(token)} {username}" + (f" {role}" if role != "user" else "")


def parse_token_file(
    text: str, source: str, log: logging.Logger | logging.LoggerAdapter
) -> dict[str, TokenEntry]:
    """``{hex digest: entry}`` for the good lines of a token file (see the module doc)."""
    entries: dict[str, TokenEntry] = {}
    lines_of: dict[str, list[int]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        problem, fields = None, line.split()
        match = _HASH.fullmatch(fields[0])
        if match is None:
            problem = "the first field is not sha256:<64 hex digits> (make lines with "
            problem += "'kcr-gateway hash-token')"
        elif len(fields) < 2:
            problem = "no user name after the hash"
        elif len(fields) > 3:
            problem = f"{len(fields)} fields, expected 'sha256:<hex> user [role]'"
        elif not USERNAME.fullmatch(fields[1]):
            problem = "bad user name (letters, digits and . _ @ + -)"
        elif len(fields) == 3 and fields[2] not in ROLES:
            problem = f"unknown role (use one of {', '.join(ROLES)})"
        if problem:
            log.error("Token file %s, line %d skipped: %s", source, number, problem)
            continue
        digest = match.group(1).lower()
        lines_of.setdefault(digest, []).append(number)
        role = fields[2] if len(fields) == 3 else "user"
        entries.setdefault(digest, TokenEntry(fields[1], role == "admin", number))
    for digest, numbers in lines_of.items():
        if len(numbers) > 1:
            del entries[digest]
            log.error(
                "Token file %s: lines %s hold the same token; it is refused on all of them "
                "(give each identity its own token)",
                source,
                ", ".join(map(str, numbers)),
            )
    return entries


class TokenFile:
    """A token file, kept current while the gateway runs (see the module doc).

    Use: ``tf = TokenFile(path, log)``; ``tf.load()`` once (raises ``OSError`` if the file
    cannot be read: a start-up error); ``tf.start()`` to follow changes; ``tf.lookup(t)``
    per request; ``await tf.stop()`` at shutdown.
    """

    def __init__(self, path: str, log, interval: float = 1.0):
        self.path = path
        self.log = log
        self.interval = interval
        self.entries: dict[str, TokenEntry] = {}
        self._signature: tuple | None = None
        self._broken: str | None = None  # why the file is not usable now, once logged
        self._task: asyncio.Task | None = None

    def lookup(self, token: str) -> TokenEntry | None:
        """The identity of ``token``, or None."""
        if not token:
            return None
        return self.entries.get(hashlib.sha256(token.encode()).hexdigest())

    def load(self) -> None:
        """Read the file now (blocking; at start-up). OSError if it cannot be read."""
        signature = self._stat()
        with open(self.path, encoding="utf-8-sig", errors="replace") as f:
            text = f.read()
        self._apply(text, signature)

    def _stat(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _apply(self, text: str, signature: tuple) -> None:
        self.entries = parse_token_file(text, self.path, self.log)
        self._signature = signature
        self._broken = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                self.log.exception("Token file %s: reload failed", self.path)

    async def check(self) -> bool:
        """Reload if the file changed; True when it was reloaded."""
        try:
            signature = await asyncio.to_thread(self._stat)
            if signature == self._signature:
                return False
            text = await asyncio.to_thread(self._read)
        except OSError as e:
            reason = e.strerror or str(e)
            if self._broken != reason:
                self.log.error(
                    "Token file %s cannot be read (%s): its tokens are refused until it can",
                    self.path,
                    reason,
                )
            self.entries, self._signature, self._broken = {}, None, reason
            return False
        self._apply(text, signature)
        self.log.info("Token file %s reloaded: %d identities", self.path, len(self.entries))
        return True

    def _read(self) -> str:
        with open(self.path, encoding="utf-8-sig", errors="replace") as f:
            return f.read()

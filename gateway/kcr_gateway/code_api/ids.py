"""The ids of the code-interpreter API: 21-character URL-safe strings.

Clients (LibreChat) check ids with ``^[A-Za-z0-9_-]{21}$``, so every id this API hands
out has that form:

* a **session id** is random (:func:`new_id`); its kernel's id is derived from it
  (:func:`kernel_id_of`), so no table maps one to the other and every gateway replica
  (and a restarted gateway) finds the same kernel;
* a **file id** is derived from the session id and the file's path in the working
  folder (:func:`file_id_of`): the same file keeps its id when code rewrites it, and the
  file is found again by listing the session's files.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
import uuid

ID_LENGTH = 21
ALPHABET = string.ascii_letters + string.digits + "_-"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{21}$")
#: uuid5 namespace of code-API kernels (any fixed UUID: it only has to never change).
_KERNEL_NAMESPACE = uuid.UUID("6b1f3c0e-8d2a-5e47-9c1b-4a7f0d2e9b53")


def new_id() -> str:
    """A fresh random id (126 bits of randomness)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))


def is_id(value: object) -> bool:
    """True for a string of exactly 21 characters from ``[A-Za-z0-9_-]``."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def kernel_id_of(session_id: str) -> str:
    """The (canonical UUID) id of the kernel behind ``session_id``."""
    return str(uuid.uuid5(_KERNEL_NAMESPACE, session_id))


def file_id_of(session_id: str, path: str) -> str:
    """The id of the file at ``path`` (relative to the working folder) in ``session_id``."""
    digest = hashlib.sha256(f"{session_id}\0{path}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:ID_LENGTH]

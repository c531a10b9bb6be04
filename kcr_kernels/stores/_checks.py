"""Argument checks shared by the kernel store implementations."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import StateTooLarge, StoreConfigError


def dump_json(value: Any, what: str) -> str:
    """Serialise a record/meta dict, with a TypeError naming ``what`` if it is not JSON-able."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from None


def check_blob(url: str, kernel_id: str, blob: bytes, limit: int | None) -> bytes:
    """Return ``blob`` as ``bytes``; raise :class:`StateTooLarge` if over ``limit``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"state blob must be bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if limit is not None and len(blob) > limit:
        raise StateTooLarge(url, kernel_id, len(blob), limit)
    return blob


def check_ttl(ttl: float, what: str = "ttl") -> float:
    """Return ``ttl`` if it is a finite number of seconds > 0, else raise ValueError."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise ValueError(f"{what} must be a finite number of seconds, not {ttl!r}")
    if ttl <= 0:
        raise ValueError(f"{what} must be > 0 seconds, not {ttl!r}")
    return float(ttl)


def check_owner(owner: str) -> str:
    """Return ``owner`` if it is a non-empty string, else raise ValueError."""
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"lease owner must be a non-empty string, not {owner!r}")
    return owner


def check_settings(url: str, state_ttl: float | None, max_state_bytes: int | None) -> None:
    """Raise :class:`StoreConfigError` for a bad ``state_ttl`` or ``max_state_bytes``."""
    if state_ttl is not None:
        try:
            check_ttl(state_ttl, "state_ttl")
        except ValueError as e:
            raise StoreConfigError(url, "open_kernel_store", str(e)) from None
    if max_state_bytes is not None and (
        isinstance(max_state_bytes, bool)
        or not isinstance(max_state_bytes, int)
        or max_state_bytes < 0
    ):
        raise StoreConfigError(
            url,
            "open_kernel_store",
            f"max_state_bytes must be a non-negative int, not {max_state_bytes!r}",
        )

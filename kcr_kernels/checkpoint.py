"""Moving a kernel's namespace between its pod and the kernel store.

The runner snapshots the user namespace (cloudpickle + lz4, see
``runner/README.md``); the gateway stores the blob with a little metadata and
puts it back into a fresh pod when the kernel moves (pod loss, hibernation,
gateway restart, another replica). Pods never see store credentials: the
bytes always pass through here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from .runner_client import RunnerClient, RunnerError
from .stores import KernelStore, StateTooLarge, StoreError

log = logging.getLogger("kcr.checkpoint")


@dataclass
class CheckpointResult:
    """What one checkpoint did. ``error`` is a sentence for the user, or ``None``."""

    saved: bool
    size: int = 0
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    error: str | None = None


@dataclass
class RestoreResult:
    """What one restore did: the checkpoint's time, restored names and failures."""

    found: bool
    created: float | None = None
    restored: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    error: str | None = None


async def checkpoint(store: KernelStore, kernel_id: str, runner: RunnerClient) -> CheckpointResult:
    """Snapshot the kernel's namespace from ``runner`` into ``store``.

    Never raises: a failure (runner refused, state too large, store down) is
    returned as ``error`` so the caller can warn the user and try again later.
    """
    started = time.perf_counter()
    try:
        response = await runner.call("POST", "/state/snapshot", b"", timeout=300)
    except RunnerError as e:
        return CheckpointResult(False, error=f"the kernel's state could not be saved: {e}")
    blob = response.body
    skipped = _json_header(response.headers.get("X-KCR-State-Errors"))
    names = _json_header(response.headers.get("X-KCR-State-Names"))
    meta = {"created": time.time(), "names": names, "errors": skipped, "size": len(blob)}
    try:
        await store.put_state(kernel_id, blob, meta)
    except StateTooLarge as e:
        return CheckpointResult(
            False,
            size=len(blob),
            skipped=skipped,
            error=f"the kernel's state ({len(blob) / 1e6:.1f} MB) is over the store's limit "
            f"({e.limit / 1e6:.1f} MB); it was not saved",
        )
    except StoreError as e:
        return CheckpointResult(False, size=len(blob), error=f"the state store failed: {e}")
    return CheckpointResult(
        True, len(blob), time.perf_counter() - started, names=names, skipped=skipped
    )


async def restore(store: KernelStore, kernel_id: str, runner: RunnerClient) -> RestoreResult:
    """Put the kernel's last checkpoint into the (fresh) pod behind ``runner``."""
    try:
        saved = await store.get_state(kernel_id)
    except StoreError as e:
        return RestoreResult(False, error=f"the state store failed: {e}")
    if saved is None:
        return RestoreResult(False)
    blob, meta = saved
    try:
        result = await runner.call_json_body("POST", "/state/restore", blob, timeout=300)
    except RunnerError as e:
        return RestoreResult(True, meta.get("created"), error=f"restoring the state failed: {e}")
    # Values the checkpoint could not pickle are missing too: name them with the failures.
    not_saved = [e for e in meta.get("errors", []) if isinstance(e, dict) and e.get("name")]
    return RestoreResult(
        True,
        meta.get("created"),
        result.get("restored", []),
        not_saved + result.get("errors", []),
    )


def _json_header(value: str | None) -> list:
    if not value:
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        return []
    return parsed if isinstance(parsed, list) else []

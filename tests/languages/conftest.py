"""Fixtures: one real runner per language per module, skipped (with the reason) when the
language's toolchain is not installed (``.ci/install-languages.sh`` installs them)."""

from __future__ import annotations

import shutil

import pytest
from kcr_runner.languages import get_language

from tests.runner.conftest import RunnerProcess


def missing_toolchain(language: str) -> str | None:
    """Why ``language`` cannot run here, or ``None`` when its toolchain is present."""
    missing = [tool for tool in get_language(language).toolchain if shutil.which(tool) is None]
    if missing:
        return (
            f"{language}: toolchain not installed ({', '.join(missing)} not on PATH); "
            "run .ci/install-languages.sh"
        )
    return None


@pytest.fixture(scope="module")
def language_runner(request, tmp_path_factory):
    """``language_runner`` parametrized indirectly with a language name."""
    language = request.param
    reason = missing_toolchain(language)
    if reason:
        pytest.skip(reason)
    runner = RunnerProcess(
        tmp_path_factory.mktemp(language), "--language", language, "--cell-timeout", "30"
    )
    yield runner
    runner.stop()


async def ok(channel, code: str) -> list[dict]:
    """Run ``code``; assert it succeeded; return its events."""
    events, reply = await channel.execute(code, timeout=60)
    assert reply["content"]["status"] == "ok", reply["content"]
    return events


async def failed(channel, code: str) -> tuple[list[dict], dict]:
    """Run ``code``; assert it failed with one matching error event; return (events, reply)."""
    events, reply = await channel.execute(code, timeout=60)
    content = reply["content"]
    assert content["status"] == "error", content
    errors = [e["content"] for e in events if e["event"] == "error"]
    assert errors == [{k: content[k] for k in ("ename", "evalue", "traceback")}]
    return events, content

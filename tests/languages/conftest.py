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

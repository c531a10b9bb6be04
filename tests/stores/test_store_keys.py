"""validate_path / validate_kernel_id / redact_url: the rules every store relies on."""

from __future__ import annotations

import pytest

from kcr_kernels.stores import (
    InvalidKernelId,
    InvalidPath,
    StoreError,
    redact_url,
    validate_kernel_id,
    validate_path,
)
from kcr_kernels.stores.keys import MAX_PATH_BYTES


@pytest.mark.parametrize(
    "path", ["a", "a/b/c.txt", ".hidden/x", "a..b", "日本/語.txt", "x" * 255, "sp ace/t\tab"[:8]]
)
def test_valid_paths_come_back_unchanged(path):
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/abs", "absolute"),
        ("a/../b", "'..'"),
        ("./a", "'.'"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\b", "backslash"),
        ("a\x00b", "control character"),
        ("tab\there", "control character"),
        ("x" * 256, "segment is longer"),
        ("d/" * (MAX_PATH_BYTES // 2) + "f", "longer than"),
        ("\ud800", "UTF-8"),
        (None, "string"),
    ],
)
def test_invalid_paths_say_why(path, reason):
    with pytest.raises(InvalidPath, match="invalid path") as info:
        validate_path(path, url="file:///srv/kcr", operation="write('k', ...)")
    assert reason in str(info.value)
    assert "file:///srv/kcr" in str(info.value) and "write('k', ...)" in str(info.value)
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kid", ["k", "0f8fad5b-d9cb-469f-a165-70867728950e", "a.b_c-d", "x" * 128])
def test_valid_kernel_ids(kid):
    assert validate_kernel_id(kid) == kid


@pytest.mark.parametrize("kid", ["", ".", "..", "-x", "a/b", "a:b", "x" * 129, 42])
def test_invalid_kernel_ids(kid):
    with pytest.raises(InvalidKernelId, match="invalid kernel id"):
        validate_kernel_id(kid)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h/1", "redis://user:***@h/1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sqlite:///var/lib/kcr.db", "sqlite:///var/lib/kcr.db"),
    ],
)
def test_passwords_are_redacted(url, shown):
    assert redact_url(url) == shown
    assert "pw" not in str(StoreError(url, "ping()", "down"))

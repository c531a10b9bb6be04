"""The folder sync's disk side (:class:`LocalFolder`): never outside the folder, bounded scans.

No servers: these are the rules the extension's end-to-end tests rely on, checked directly
against a real folder (symlinks swapped in where a parent folder was, names a kernel could
send, the scan's limits).
"""

from __future__ import annotations

import os

import pytest

from kcr_kernels.server_extension.folder_sync import conflict_name
from kcr_kernels.server_extension.local_folder import LocalFolder, Rules
from kcr_kernels.stores import InvalidPath


def test_writes_never_follow_a_symlink_out_of_the_folder(tmp_path):
    folder, outside = tmp_path / "f", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    os.symlink(outside, folder / "sub")  # a parent folder swapped for a link
    local = LocalFolder(str(folder))
    with pytest.raises(OSError):
        local.create_temp("sub/x.txt")
    with pytest.raises(InvalidPath):
        local.create_temp("../x.txt")
    assert local.delete("sub/x.txt") is False
    assert list(outside.iterdir()) == []


def test_a_written_file_replaces_a_symlink_instead_of_following_it(tmp_path):
    folder, target = tmp_path / "f", tmp_path / "target.txt"
    folder.mkdir()
    target.write_text("outside")
    os.symlink(target, folder / "a.txt")
    local = LocalFolder(str(folder))
    dir_fd, f, temp = local.create_temp("a.txt")
    os.write(f, b"kernel")
    local.commit("a.txt", dir_fd, f, temp)
    assert target.read_text() == "outside"
    assert not (folder / "a.txt").is_symlink() and (folder / "a.txt").read_text() == "kernel"


def test_scan_stops_at_max_files_and_skips_with_reasons(tmp_path):
    for i in range(30):
        (tmp_path / f"{i}.txt").write_text("x")
    assert LocalFolder(str(tmp_path)).scan(Rules(max_files=10)).refused
    scan = LocalFolder(str(tmp_path)).scan(Rules(max_files=30, max_bytes=20))
    assert scan.refused is None and len(scan.files) == 20
    assert {s.reason for s in scan.skipped} == {
        "the folder's files are over the limit of 20 bytes in all"
    }


def test_conflict_names():
    assert conflict_name("a/data.csv", "T") == "a/data.kernel-T.csv"
    assert conflict_name("Makefile", "T") == "Makefile.kernel-T"
    assert conflict_name("x.tar.gz", "T") == "x.tar.kernel-T.gz"

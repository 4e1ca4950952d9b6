"""Output paths are proven writable before any work starts, and the proof leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import UsageError
from services.commands.preflight import check_output_dir, check_output_file


def test_a_new_nested_directory_passes_and_is_not_left_behind(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    check_output_dir(out)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_passes_and_keeps_its_files(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    check_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_a_file_given_as_directory_is_named(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("{}")
    with pytest.raises(UsageError, match=r"--out .*summary\.json: is a file, expected a directory"):
        check_output_dir(target)


def test_a_directory_under_a_file_names_the_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(UsageError, match=rf"lies under {blocker}, which is a file"):
        check_output_dir(blocker / "x" / "y")


def unwritable_directory(tmp_path: Path) -> Path:
    # Permission bits do not stop root; sysfs refuses new entries to everyone.
    if os.geteuid() == 0:
        return Path("/sys") / "deepfactor-preflight-check"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "out"


def test_an_unwritable_directory_is_refused_with_the_reason(tmp_path):
    target = unwritable_directory(tmp_path)
    with pytest.raises(UsageError, match=rf"--out {target}: cannot be written \("):
        check_output_dir(target)
    assert not target.exists()


def test_an_output_file_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(UsageError, match="is a directory, expected a file name"):
        check_output_file(tmp_path)


def test_an_output_file_under_a_file_names_the_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(UsageError, match=rf"--out {blocker}/x.parquet: lies under {blocker}"):
        check_output_file(blocker / "x.parquet")


def test_an_output_file_in_a_new_folder_passes(tmp_path):
    check_output_file(tmp_path / "new" / "x.csv")
    assert list(tmp_path.iterdir()) == []

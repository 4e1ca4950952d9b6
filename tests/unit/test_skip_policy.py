"""CI's skip policy: a skip for a missing file fails the run, a skip for missing hardware or
network does not, and without the flag nothing changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIPPING = """
import pytest

@pytest.mark.skip(reason="{reason}")
def test_skipped():
    pass

def test_runs():
    assert True
"""


def run_pytest(tmp_path: Path, reason: str, forbid: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SKIPPING.format(reason=reason))
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("DEEPFACTOR_FORBID_SKIPS", None)
    if forbid:
        environ["DEEPFACTOR_FORBID_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.skip_policy",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environ,
    )  # fmt: skip


def test_a_skip_for_a_missing_file_fails_the_run_and_is_named(tmp_path):
    result = run_pytest(tmp_path, "fixture file is absent", forbid=True)
    assert result.returncode == 1, result.stdout
    assert "skips not allowed here" in result.stdout
    assert "test_sample.py::test_skipped: fixture file is absent" in result.stdout


@pytest.mark.parametrize("reason", ["needs hardware: a CUDA GPU", "needs network: binance.com"])
def test_a_skip_for_hardware_or_network_is_allowed(tmp_path, reason):
    result = run_pytest(tmp_path, reason, forbid=True)
    assert result.returncode == 0, result.stdout


def test_without_the_flag_skips_do_not_fail(tmp_path):
    result = run_pytest(tmp_path, "fixture file is absent", forbid=False)
    assert result.returncode == 0, result.stdout

"""``deepfactor run signal`` scales out: its processes lock their consumer name in the run
directory, not the service, so distinct instances run side by side and only a second process
of the same instance is refused (or waits as its standby)."""

from __future__ import annotations

import os

import pytest

from services.runtime.run_dir import RunDirectoryInUseError
from services.runtime.standalone import SCALES_OUT, ProcessLocks


def test_signal_instances_of_distinct_names_hold_their_locks_side_by_side(tmp_path):
    assert SCALES_OUT == {"signal"}
    with (
        ProcessLocks(tmp_path, "signal", instance="a"),
        ProcessLocks(tmp_path, "signal", instance="b"),
    ):
        with pytest.raises(
            RunDirectoryInUseError,
            match=f"signal instance a already runs there .pid {os.getpid()}.*own --instance",
        ):
            ProcessLocks(tmp_path, "signal", instance="a").acquire()
    assert sorted(p.name for p in tmp_path.glob("service-*.lock")) == [
        "service-signal-a.lock",
        "service-signal-b.lock",
    ]

"""The one-pass books check of ``tests/audit.py`` agrees with the snapshot-by-snapshot rebuild,
and names each snapshot that does not balance."""

from __future__ import annotations

import msgspec
import pytest

from engine.config import load_config
from engine.data import synthetic_panel
from services.commands.backtest import Backtest
from tests.audit import read_ledger, rebuild_and_compare, unbalanced_snapshots


@pytest.fixture(scope="module")
def ledger():
    settings = {
        "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
        "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
    }
    backtest = Backtest(load_config(None, settings), synthetic_panel(8, 90, seed=11))
    backtest.run()
    return read_ledger(backtest.bus)


def test_a_balanced_ledger_has_no_unbalanced_snapshot(ledger):
    assert ledger.fills and len(ledger.snapshots) >= 90
    assert rebuild_and_compare(ledger, 1_000_000.0) == len(ledger.snapshots)
    assert unbalanced_snapshots(ledger, 1_000_000.0) == []


def test_each_snapshot_off_by_a_cent_is_named(ledger):
    snapshots = list(ledger.snapshots)
    for at in (10, 40):
        snapshots[at] = msgspec.structs.replace(snapshots[at], cash=snapshots[at].cash + 0.01)
    tampered = type(ledger)(ledger.bars, ledger.orders, ledger.updates, ledger.fills, snapshots)
    problems = unbalanced_snapshots(tampered, 1_000_000.0)
    assert [p.split(": ")[0] for p in problems] == [
        snapshots[10].asof.isoformat(),
        snapshots[40].asof.isoformat(),
    ]
    assert "cash" in problems[0]
    with pytest.raises(AssertionError):
        rebuild_and_compare(tampered, 1_000_000.0)

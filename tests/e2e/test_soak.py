"""Soak: the paper daemons over Redis on the whole bundled sample (2,747 bars, 19 stocks, a late
listing, about 570 weekly rebalances) decide exactly what the backtest does, and their books
balance at every snapshot. Slow (about half a minute): run with ``make test-slow``."""

from __future__ import annotations

import threading

import pytest

from engine.bus import RedisBus
from engine.config import load_config
from engine.data import sample_panel
from services.commands.backtest import Backtest
from services.runtime.paper import run_paper
from tests.audit import read_ledger, rebuild_and_compare, terminal_updates_per_order
from tests.conftest import delete_namespace

pytestmark = pytest.mark.slow


def order_key(order) -> tuple:
    return (order.client_order_id, order.side, round(order.quantity, 9))


def test_paper_on_the_whole_sample_matches_the_backtest_order_for_order(redis_url, tmp_path):
    config = load_config(
        None, {"DEEPFACTOR_BUS__REDIS_URL": redis_url, "DEEPFACTOR_BUS__BLOCK_MS": "50"}
    )
    panel = sample_panel()
    run = run_paper(config, panel, tmp_path / "run", speed=0, stop=threading.Event())
    bus = RedisBus(redis_url, run.namespace, give_up_after_s=5)
    try:
        paper = read_ledger(bus)
    finally:
        delete_namespace(redis_url, run.namespace)
        bus.close()
    backtest = Backtest(config, panel)
    expected = backtest.run()
    replayed = read_ledger(backtest.bus)

    assert run.pending_at_exit == 0 and run.summary["bars"] == panel.n_bars
    assert len(paper.orders) > 1_000, "the soak should trade throughout"
    assert [order_key(o) for o in paper.orders] == [order_key(o) for o in replayed.orders]
    assert set(terminal_updates_per_order(paper).values()) == {1}
    assert rebuild_and_compare(paper, config.portfolio.initial_cash) >= panel.n_bars
    assert run.summary["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-12)

"""The whole loop, thin but real, on both buses: the books balance at every snapshot, every
order ends exactly once, and the paper daemons over Redis decide exactly what the backtest does."""

from __future__ import annotations

import threading

import pytest

from engine.bus import RedisBus
from engine.config import load_config
from engine.data import synthetic_panel
from services.commands.backtest import Backtest
from services.runtime.paper import run_paper
from tests.audit import read_ledger, rebuild_and_compare, terminal_updates_per_order
from tests.conftest import delete_namespace

BARS = 90


def small_config(fill_price: str = "next_open", **environ: str):
    return load_config(
        None,
        {
            "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
            "DEEPFACTOR_BROKER__FILL_PRICE": fill_price,
            "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
            **environ,
        },
    )


def panel():
    return synthetic_panel(8, BARS, seed=11)


def check_books(ledger, initial_cash: float) -> None:
    assert ledger.orders, "the run should trade"
    counts = terminal_updates_per_order(ledger)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert len({o.client_order_id for o in ledger.orders}) == len(ledger.orders)
    assert rebuild_and_compare(ledger, initial_cash) >= BARS


@pytest.mark.parametrize("fill_price", ["next_open", "close"])
def test_backtest_books_balance_and_every_order_ends_once(fill_price):
    config = small_config(fill_price)
    backtest = Backtest(config, panel())
    summary = backtest.run()
    ledger = read_ledger(backtest.bus)
    check_books(ledger, config.portfolio.initial_cash)
    assert summary["orders"] == len(ledger.orders) and summary["fills"] == len(ledger.fills)
    assert summary["final_equity"] == pytest.approx(ledger.snapshots[-1].equity, rel=1e-12)
    assert backtest.pump.pending() == 0


def test_paper_over_redis_balances_and_matches_the_backtest(redis_url, tmp_path):
    config = small_config(DEEPFACTOR_BUS__REDIS_URL=redis_url, DEEPFACTOR_BUS__BLOCK_MS="50")
    run = run_paper(config, panel(), tmp_path / "run", speed=0, stop=threading.Event())
    bus = RedisBus(redis_url, run.namespace, give_up_after_s=5)
    try:
        ledger = read_ledger(bus)
        check_books(ledger, config.portfolio.initial_cash)
        assert run.pending_at_exit == 0
        expected = Backtest(config, panel()).run()
        assert run.summary["orders"] == expected["orders"]
        assert run.summary["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-12)
        assert (tmp_path / "run" / "summary.json").exists()
    finally:
        delete_namespace(redis_url, run.namespace)
        bus.close()

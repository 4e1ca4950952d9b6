"""A backtest that sends quiet runs of bars as BarBlocks decides, trades and books exactly what
it does when every bar goes out as its own BarSet: the same factor snapshots, orders, fills,
equity curve and summary, byte for byte."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine.config import load_config
from engine.data import Panel, synthetic_panel
from engine.events import BarBlock, PortfolioSnapshot
from services.commands.backtest import Backtest
from tests.audit import read_ledger, rebuild_and_compare

N_ASSETS, N_BARS = 20, 420
MOMENTUM_TOML = """
[schedule]
name = "monthly"
cron = "0 0 1 * *"
[strategy]
compute_on = "rebalance"
winsorize = "none"
[[strategy.factors]]
name = "momentum"
params = { lookback = 60, skip = 5 }
[portfolio]
top_fraction = 0.25
min_order_notional = 0.0
[broker]
fee_rate = 0.001
fill_price = "close"
"""


def panel_with_holes() -> Panel:
    """Late listings (inside quiet runs, one after a higher column), a symbol skipping bars, a
    delisting, a bar time with no bars at all, and bad bars the market-data service rejects."""
    panel = synthetic_panel(N_ASSETS, N_BARS, seed=21)
    arrays = {
        name: getattr(panel, name).copy() for name in ("open", "high", "low", "close", "volume")
    }
    missing = np.zeros((N_BARS, N_ASSETS), dtype=bool)
    missing[:75, 10:] = True  # the universe grows from 10 to 20 inside a quiet run, which
    missing[:77, 3] = True  # changes how a sum across it is grouped
    missing[200:210, 5] = True
    missing[350:, 7] = True
    missing[260] = True
    for matrix in arrays.values():
        matrix[missing] = np.nan
    arrays["high"][120, 1] = arrays["low"][120, 1] * 0.5  # high below low: rejected
    arrays["close"][300, 2] = -1.0  # negative price: rejected
    return dataclasses.replace(panel, **arrays)


def config_for(kind: str, tmp_path: Path, fill_price: str):
    if kind == "momentum":
        path = tmp_path / "momentum.toml"
        path.write_text(MOMENTUM_TOML)
        return load_config(path, {"DEEPFACTOR_BROKER__FILL_PRICE": fill_price})
    # The reference config: every kind of factor, exposures on every bar, weekly rebalances.
    return load_config(
        Path("deploy/configs/paper.toml"),
        {"DEEPFACTOR_BROKER__FILL_PRICE": fill_price, "DEEPFACTOR_STRATEGY__COMPUTE_ON": kind},
    )


def run(config, block_bars: int, out: Path) -> tuple[dict, Backtest]:
    backtest = Backtest(config, panel_with_holes(), block_bars=block_bars)
    return backtest.run(out), backtest


def raw_payloads(backtest: Backtest, topic: str) -> list:
    consumer = backtest.bus.consumer(f"auditor-{topic}", "auditor-1", [topic])
    out = []
    while deliveries := consumer.read(10_000):
        out += [d.event.payload for d in deliveries]
        consumer.ack(deliveries)
    return out


def encode_payload(payload) -> bytes:
    # Payloads only (envelopes carry fresh ids and times); JSON, so NaN compares as null.
    return msgspec.json.encode(payload)


def book_of(snapshot: PortfolioSnapshot) -> PortfolioSnapshot:
    """The account part of a snapshot: marks carry no risk figures (a block's bars are marked
    together; VaR and the flags are published with the snapshot of its last bar)."""
    return msgspec.structs.replace(
        snapshot, realised_var=None, expected_var=None, halted=False, drawdown_stopped=False
    )


def published(backtest: Backtest, topic: str) -> list[bytes]:
    return [encode_payload(p) for p in raw_payloads(backtest, topic)]


@pytest.mark.parametrize(
    "kind,fill_price",
    [
        ("momentum", "close"),
        ("momentum", "next_open"),
        ("bar", "next_open"),
        ("rebalance", "close"),
    ],
)
def test_blocks_and_bar_by_bar_backtests_are_identical(kind, fill_price, tmp_path):
    config = config_for(kind, tmp_path, fill_price)
    by_bar, by_bar_run = run(config, 1, tmp_path / "by-bar")
    blocks, blocks_run = run(config, 1024, tmp_path / "blocks")
    assert by_bar["orders"] > 20, "the run should trade"
    assert blocks == by_bar
    assert (tmp_path / "blocks" / "equity.csv").read_bytes() == (
        tmp_path / "by-bar" / "equity.csv"
    ).read_bytes()
    for topic in ("factors", "signals", "orders", "order_updates", "fills"):
        assert published(blocks_run, topic) == published(by_bar_run, topic), topic
    assert blocks_run.market.rejected == by_bar_run.market.rejected == 2
    # The books balance at every bar of the blocked run too, and its marks, expanded per bar,
    # are the bar-by-bar run's snapshots.
    ledger, expected = read_ledger(blocks_run.bus), read_ledger(by_bar_run.bus)
    assert any(isinstance(b, BarBlock) for b in raw_payloads(blocks_run, "bars"))
    assert rebuild_and_compare(ledger, config.portfolio.initial_cash) == len(expected.snapshots)
    assert [encode_payload(book_of(s)) for s in ledger.snapshots] == [
        encode_payload(book_of(s)) for s in expected.snapshots
    ]

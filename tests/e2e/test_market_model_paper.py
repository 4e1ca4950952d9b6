"""A paper run with the simulated broker's market model on real Binance 5-minute bars (with
their volumes): the ledger shows orders filled over several bars, what the volume cap left
expiring, and fees and slippage in every fill; the summary counts them the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/fixtures/data/freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
CONFIG = ROOT / "deploy/configs/market-model.toml"


def test_a_paper_run_shows_partial_fills_expiries_and_fees_in_its_ledger(short_tmp):
    out = short_tmp / "market"
    result = subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "paper", "--config", str(CONFIG), "--data",
         str(DATA), "--bars", "400", "--speed", "max", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    fills = [e["payload"] for e in events if e["type"] == "Fill"]
    updates = [e["payload"] for e in events if e["type"] == "OrderUpdate"]
    orders = {
        e["payload"]["client_order_id"]: e["payload"] for e in events if e["type"] == "OrderRequest"
    }
    per_order = Counter(f["client_order_id"] for f in fills)
    assert max(per_order.values()) >= 2  # filled over several bars
    assert any(u["status"] == "partially_filled" for u in updates)
    expired = [u for u in updates if u["status"] == "expired"]
    assert expired and all(u["reason"].startswith("expired after 3 bar(s)") for u in expired)
    # Every fill pays the taker fee on its notional (no resting limit orders in this run).
    assert all(abs(f["fee"] - 0.001 * f["quantity"] * f["price"]) <= 1e-12 for f in fills)
    terminal = Counter()
    for update in updates:
        if update["status"] in ("filled", "cancelled", "rejected", "expired"):
            terminal[update["client_order_id"]] += 1
    assert set(terminal) == set(orders) and set(terminal.values()) == {1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fills"] == len({f["fill_id"] for f in fills})
    assert summary["fees"] == pytest.approx(sum(f["fee"] for f in fills), rel=1e-9)
    assert summary["order_outcomes"]["expired"] == len(expired)
    assert summary["partial_fills"] >= len(expired)
    assert "orders ended" in result.stdout

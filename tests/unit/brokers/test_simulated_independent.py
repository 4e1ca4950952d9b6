"""The paper broker against an independent calculation on real prices: a fixed list of 60
orders on Binance 5-minute bars (10 BTC pairs, January 2018, with their real volumes) gives the
same fills, the same fees and the same final equity to the satoshi as the rules written out
here in plain Python over pandas rows (brokers/fill_model.py states them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brokers.simulated import SimulatedBroker
from engine.events import BarSet, Fill, OrderRequest, OrderUpdate

DATA = (
    Path(__file__).resolve().parents[2]
    / "fixtures/data/freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
)
STEP = timedelta(minutes=5)
CASH = 5.0  # BTC
TAKER, MAKER, SLIPPAGE_BPS, IMPACT, PARTICIPATION, TTL = 0.001, 0.0002, 3.0, 0.1, 0.05, 3


def load() -> dict[pd.Timestamp, pd.DataFrame]:
    frame = pd.read_csv(DATA, parse_dates=["timestamp"])
    frame = frame[frame.symbol != "ADA/BTC"]  # the one pair with gaps: keep every bar full
    return {t: rows.set_index("symbol") for t, rows in frame.groupby("timestamp")}


def order_list(bars: dict[pd.Timestamp, pd.DataFrame]) -> list[tuple[int, OrderRequest]]:
    """60 orders (market and limit, buys and sells, some beyond the volume cap, the cash or
    the position), each decided on a bar's close: (bar number, request)."""
    rng = np.random.default_rng(20180114)
    times = sorted(bars)
    held: dict[str, float] = {}
    orders = []
    for n, index in enumerate(sorted(rng.choice(np.arange(10, len(times) - 10), 60, False))):
        row = bars[times[index]]
        symbol = str(rng.choice(row.index.to_numpy()))
        close = float(row.loc[symbol, "close"])
        selling = held.get(symbol, 0.0) > 0 and rng.random() < 0.45
        if selling:
            quantity = held[symbol] * float(rng.choice([0.5, 1.0, 1.3]))
            held[symbol] = max(held[symbol] - quantity, 0.0)
        else:
            quantity = float(rng.uniform(0.02, 0.3)) / close
            held[symbol] = held.get(symbol, 0.0) + quantity
        limit = None
        if rng.random() < 0.3:
            limit = close * (1.002 if selling else 0.998)
        orders.append(
            (
                index,
                OrderRequest(
                    client_order_id=f"fixed-{n:02d}",
                    rebalance_id="fixed",
                    asof=(times[index] + STEP).to_pydatetime(),
                    symbol=symbol,
                    side="sell" if selling else "buy",
                    quantity=quantity,
                    order_type="limit" if limit else "market",
                    limit_price=limit,
                    reference_price=close,
                ),
            )
        )
    return orders


# -- the independent calculation ------------------------------------------------------------
@dataclass
class Working:
    request: OrderRequest
    filled: float = 0.0
    bars: int = 0
    fills: int = 0


@dataclass
class Account:
    cash: float = CASH
    positions: dict[str, float] = field(default_factory=dict)
    fills: list[tuple[str, float, float, float]] = field(default_factory=list)


def taker_price(side: str, reference: float, quantity: float, volume: float) -> float:
    cost = min(SLIPPAGE_BPS / 1e4 + IMPACT * math.sqrt(quantity / volume), 0.5)
    return reference * (1 + cost) if side == "buy" else reference * (1 - cost)


def trade_bar(account: Account, order: Working, bar: pd.Series, used: dict[str, float]) -> bool:
    """Work ``order`` on ``bar``; True when it is done (filled, cut or expired)."""
    request = order.request
    buy = request.side == "buy"
    limit = request.limit_price
    resting = order.bars > 0
    order.bars += 1
    o, h, low, v = bar["open"], bar["high"], bar["low"], bar["volume"]
    if limit is None or (o <= limit if buy else o >= limit):
        taker = limit is None or not resting
        reference = o
    elif (low <= limit) if buy else (h >= limit):
        taker, reference = False, limit
    else:
        return order.bars >= TTL
    fee_rate = TAKER if taker else MAKER
    wanted = request.quantity - order.filled
    room = PARTICIPATION * v - used.get(request.symbol, 0.0)
    quantity = min(wanted, max(room, 0.0))
    capped = quantity < wanted * (1 - 1e-9)

    def price_of(q: float) -> float:
        if not taker:
            return reference
        p = taker_price(request.side, reference, q, v)
        if limit is not None:
            p = min(p, limit) if buy else max(p, limit)
        return p

    price = price_of(quantity)
    short = False
    if buy and account.cash / (price * (1 + fee_rate)) < quantity * (1 - 1e-9):
        quantity, short = account.cash / (price * (1 + fee_rate)), True
        price = price_of(quantity)
    held = account.positions.get(request.symbol, 0.0)
    if not buy and held < quantity * (1 - 1e-9):
        quantity, short = held, True
    if quantity <= 1e-12:
        return short or order.bars >= TTL
    value = quantity * price
    fee = value * fee_rate
    account.cash += -(value + fee) if buy else value - fee
    account.positions[request.symbol] = held + (quantity if buy else -quantity)
    used[request.symbol] = used.get(request.symbol, 0.0) + quantity
    order.filled += quantity
    order.fills += 1
    account.fills.append((f"{request.client_order_id}-f{order.fills}", quantity, price, fee))
    done = order.filled >= request.quantity * (1 - 1e-9) or short
    return done or (capped and order.bars >= TTL) or order.bars >= TTL


def independent(bars, orders) -> Account:
    account = Account()
    times = sorted(bars)
    working: list[Working] = []
    by_bar: dict[int, list[OrderRequest]] = {}
    for index, request in orders:
        by_bar.setdefault(index, []).append(request)
    for index, time in enumerate(times):
        used: dict[str, float] = {}
        working = [
            w for w in working if not trade_bar(account, w, bars[time].loc[w.request.symbol], used)
        ]
        working += [Working(r) for r in by_bar.get(index, [])]
    return account


# -- the broker ----------------------------------------------------------------------------
def bar_set(time: pd.Timestamp, rows: pd.DataFrame) -> BarSet:
    return BarSet(
        timeframe="5m",
        bar_open=time.to_pydatetime(),
        symbols=tuple(rows.index),
        open=tuple(rows["open"].astype(float)),
        high=tuple(rows["high"].astype(float)),
        low=tuple(rows["low"].astype(float)),
        close=tuple(rows["close"].astype(float)),
        volume=tuple(rows["volume"].astype(float)),
    )


def test_the_paper_broker_matches_the_independent_calculation_to_the_satoshi():
    bars = load()
    orders = order_list(bars)
    broker = SimulatedBroker(
        initial_cash=CASH,
        fee_rate=TAKER,
        maker_fee_rate=MAKER,
        slippage_bps=SLIPPAGE_BPS,
        impact_coefficient=IMPACT,
        max_participation=PARTICIPATION,
        order_ttl_bars=TTL,
        fee_currency="BTC",
    )
    by_bar: dict[int, list[OrderRequest]] = {}
    for index, request in orders:
        by_bar.setdefault(index, []).append(request)
    events = []
    times = sorted(bars)
    for index, time in enumerate(times):
        events += broker.on_bar(bar_set(time, bars[time]))
        for request in by_bar.get(index, []):
            events += broker.submit(request)
    expected = independent(bars, orders)

    fills = [e for e in events if isinstance(e, Fill)]
    assert [f.fill_id for f in fills] == [f[0] for f in expected.fills]
    got = np.array([(f.quantity, f.price, f.fee) for f in fills])
    np.testing.assert_allclose(got, np.array([f[1:] for f in expected.fills]), rtol=1e-12)
    last = bars[times[-1]]["close"]
    equity = broker.cash + sum(q * last[s] for s, q in broker.positions.items())
    reference = expected.cash + sum(q * last[s] for s, q in expected.positions.items())
    assert round(equity, 8) == round(reference, 8)
    assert sum(f.fee for f in fills) == pytest.approx(sum(f[3] for f in expected.fills), rel=1e-12)

    # The list exercises what it is meant to: partial fills over bars, expiry, limit orders
    # as makers and takers, and cuts by cash or position.
    updates = [e for e in events if isinstance(e, OrderUpdate)]
    statuses = {u.status for u in updates}
    assert {"partially_filled", "filled", "expired"} <= statuses
    assert any(f.fill_id.endswith("-f2") for f in fills)
    maker = [f for f in fills if f.fee == pytest.approx(f.quantity * f.price * MAKER)]
    assert maker and len(maker) < len(fills)
    assert broker.open_order_count == 0

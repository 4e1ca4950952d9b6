"""The rebalancer's risk limits: the drawdown stop and its re-entry, the VaR limit, the kill
switch, the pre-trade checks, the optimiser's fallback and the risk figures of the snapshots.

Every expected number is computed here from the prices the test sends (pandas, numpy, scipy),
not read back from the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count

import msgspec
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import PortfolioConfig, RiskConfig
from engine.events import (
    BarSet,
    Control,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioSnapshot,
    RebalanceDue,
    RiskAlert,
    Signal,
    TargetPortfolio,
    make_event,
)
from services.daemons.rebalance import RebalanceService

T0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
SYMBOLS = ("A", "B", "C", "D")
FIRST_CLOSES = (10.0, 20.0, 30.0, 40.0)
FIRST_SCORES = (1.0, 0.5, 0.0, -1.0)  # top-k 0.5: A and B, 500 each of 1000
NO_LIMITS = {"var_limit": 0.0, "drawdown_stop": 0.0, "price_collar": 0.0, "max_data_age_bars": 0}
_probes = count()


# -- builders ------------------------------------------------------------------------------------
def at(bar: int) -> datetime:
    return T0 + bar * DAY


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def bars(close_time: datetime, closes) -> BarSet:
    closes = tuple(float(c) for c in closes)
    return BarSet(
        bar_open=close_time - DAY,
        symbols=SYMBOLS,
        open=closes,
        high=closes,
        low=closes,
        close=closes,
    )


def signal(asof: datetime, scores=FIRST_SCORES) -> Signal:
    return Signal(
        asof=asof,
        model="equal-weight",
        factor_weights={"f": 1.0},
        symbols=SYMBOLS,
        scores=tuple(scores),
    )


def tick(decision_time: datetime, name: str) -> RebalanceDue:
    return RebalanceDue(
        rebalance_id=name, schedule="test", due=decision_time, decision_time=decision_time
    )


def fill(order: OrderRequest) -> Fill:
    return Fill(
        fill_id=f"{order.client_order_id}-f1",
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        price=order.reference_price,
        fee=0.0,
        fee_currency="USDT",
        executed_at=order.asof,
    )


def done(order: OrderRequest) -> OrderUpdate:
    return OrderUpdate(
        client_order_id=order.client_order_id,
        status="filled",
        filled_quantity=order.quantity,
        average_price=order.reference_price,
    )


def manual_fill(symbol: str, quantity: float, price: float) -> Fill:
    """A fill of no open order (booked all the same): a position the book starts with."""
    return Fill(
        fill_id=f"manual-{symbol}",
        client_order_id=f"manual-{symbol}",
        symbol=symbol,
        side="buy",
        quantity=quantity,
        price=price,
        fee=0.0,
        fee_currency="USDT",
        executed_at=T0,
    )


def random_walk(n_bars: int, seed: int, vol: float = 0.02) -> np.ndarray:
    """Closes (bars x SYMBOLS) of a seeded geometric random walk around 100."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, vol, size=(n_bars - 1, len(SYMBOLS)))
    start = np.array([100.0, 80.0, 120.0, 60.0])
    return start * np.exp(np.vstack([np.zeros(len(SYMBOLS)), np.cumsum(steps, axis=0)]))


# -- independent risk measures -------------------------------------------------------------------
def bar_returns(closes: np.ndarray, window: int) -> pd.DataFrame:
    """The last ``window`` simple returns close[t]/close[t-1]-1 of ``closes``."""
    return pd.DataFrame(closes, columns=list(SYMBOLS)).pct_change().dropna().iloc[-window:]


def var_of(series: pd.Series, method: str, confidence: float = 0.99) -> float:
    tail = 1.0 - confidence
    if method == "historical":
        return -float(series.quantile(tail))
    mean, std = float(series.mean()), float(series.std(ddof=1))
    z = float(stats.norm.ppf(tail))
    if method == "cornish-fisher":
        s = float(stats.skew(series, bias=False))
        k = float(stats.kurtosis(series, fisher=True, bias=False))
        z = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    return -(mean + z * std)


# -- harness -------------------------------------------------------------------------------------
@dataclass
class Published:
    targets: list[TargetPortfolio] = field(default_factory=list)
    orders: list[OrderRequest] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    snapshots: list[PortfolioSnapshot] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [alert.kind for alert in self.alerts]

    def of_kind(self, kind: str) -> list[RiskAlert]:
        return [alert for alert in self.alerts if alert.kind == kind]


class Desk:
    """A rebalancer on a MemoryBus, fed by hand, with a probe on everything it publishes."""

    def __init__(
        self,
        risk: RiskConfig,
        portfolio: PortfolioConfig | None = None,
        clock: SimulatedClock | None = None,
    ) -> None:
        self.bus = MemoryBus()
        self.clock = clock or SimulatedClock(T0)
        self.portfolio = portfolio or PortfolioConfig(
            initial_cash=1000.0, construction="top-k", top_fraction=0.5, max_weight=1.0
        )
        self.risk = risk
        self.service = RebalanceService(self.bus, self.clock, self.portfolio, risk)
        self.probe = self.bus.consumer(
            f"probe-{next(_probes)}", "p", ["targets", "orders", "risk", "portfolio"]
        )

    def send(self, *payloads, ts: datetime = T0) -> None:
        for payload in payloads:
            self.service.handle(make_event(payload, source="test", ts=ts))

    def read(self) -> Published:
        out = Published()
        for delivery in self.probe.read(10_000):
            payload = delivery.event.payload
            if isinstance(payload, TargetPortfolio):
                out.targets.append(payload)
            elif isinstance(payload, OrderRequest):
                out.orders.append(payload)
            elif isinstance(payload, RiskAlert):
                out.alerts.append(payload)
            elif isinstance(payload, PortfolioSnapshot):
                out.snapshots.append(payload)
        return out

    def fill_all(self, orders: list[OrderRequest]) -> None:
        for order in orders:
            self.send(fill(order), done(order))

    def restored(self) -> Desk:
        """A new rebalancer (new bus, same clock and configs) restored from this one's state."""
        other = Desk(self.risk, self.portfolio, self.clock)
        other.service.restore_state(self.service.snapshot_state())
        return other

    def hold_a_and_b(self) -> list[OrderRequest]:
        """rb-0 at T0 buys 50 A at 10 and 25 B at 20, filled at those prices: cash 0."""
        self.send(bars(T0, FIRST_CLOSES), signal(T0), tick(T0, "rb-0"))
        orders = self.read().orders
        assert [(o.symbol, o.side, o.quantity) for o in orders] == [
            ("A", "buy", pytest.approx(50.0)),
            ("B", "buy", pytest.approx(25.0)),
        ]
        self.fill_all(orders)
        assert self.service.book.positions == {"A": pytest.approx(50.0), "B": pytest.approx(25.0)}
        self.read()
        return orders


# -- 1-3. drawdown stop, re-entry, restart ------------------------------------------------------
DRAWDOWN = RiskConfig(
    drawdown_stop=0.10,
    drawdown_exposure=0.0,
    reentry_cooldown_bars=3,
    reentry_filter="none",
    var_limit=0.0,
    price_collar=0.0,
    max_data_age_bars=0,
)
# Bar 1: A 8.7, B 17.3 -> equity 50 * 8.7 + 25 * 17.3 = 867.5, 13.25% under the 1000 peak.
STOP_CLOSES = (8.7, 17.3, 31.0, 39.0)


def stopped_desk(risk: RiskConfig = DRAWDOWN) -> tuple[Desk, Published]:
    """A held book stopped on bar 1, its cut published (returned) and filled."""
    desk = Desk(risk)
    desk.hold_a_and_b()
    desk.send(bars(at(1), STOP_CLOSES))
    cut = desk.read()
    desk.fill_all(cut.orders)
    assert desk.service.book.positions == {}
    return desk, cut


def test_a_drawdown_under_the_stop_does_nothing():
    desk = Desk(DRAWDOWN)
    desk.hold_a_and_b()
    desk.send(bars(at(1), (9.1, 18.0, 30.0, 40.0)))  # 455 + 450 = 905: 9.5% under 1000
    out = desk.read()
    assert out.orders == [] and out.targets == [] and out.alerts == []
    assert not desk.service.risk.drawdown.stopped
    assert [s.drawdown_stopped for s in out.snapshots] == [False]


def test_the_drawdown_stop_cuts_the_whole_book_on_the_bar_it_happens():
    desk = Desk(DRAWDOWN)
    desk.hold_a_and_b()
    desk.send(bars(at(1), STOP_CLOSES))
    out = desk.read()
    rebalance_id = f"dd-{stamp(at(1))}"
    assert rebalance_id == "dd-20240302T000000Z"
    [target] = out.targets
    assert target.rebalance_id == rebalance_id and target.asof == at(1)
    assert target.symbols == ("A", "B") and target.weights == (0.0, 0.0)
    assert target.cash_weight == 1.0 and target.risk_actions == ("drawdown_stop",)
    assert [(o.symbol, o.side, o.quantity, o.reduce_only) for o in out.orders] == [
        ("A", "sell", pytest.approx(50.0), True),
        ("B", "sell", pytest.approx(25.0), True),
    ]
    assert all(o.rebalance_id == rebalance_id for o in out.orders)
    assert [o.client_order_id for o in out.orders] == [f"{rebalance_id}-A", f"{rebalance_id}-B"]
    assert [o.reference_price for o in out.orders] == [8.7, 17.3]  # the stop bar's closes
    assert all(o.asof == at(1) for o in out.orders)
    # The alert's numbers, from the positions and prices sent here.
    equity = 50 * 8.7 + 25 * 17.3
    peak = 1000.0
    [alert] = out.of_kind("drawdown_stop")
    assert alert.severity == "critical"
    assert alert.metrics["drawdown"] == pytest.approx(1 - equity / peak, abs=1e-6)
    assert alert.metrics["stop"] == pytest.approx(0.10)
    assert alert.metrics["peak"] == pytest.approx(peak)
    assert alert.metrics["equity"] == pytest.approx(equity)
    # The bar's snapshot goes out before the cut, and says the book is stopped.
    [snapshot] = out.snapshots
    assert snapshot.asof == at(1) and snapshot.drawdown_stopped and not snapshot.halted
    assert snapshot.equity == pytest.approx(equity)
    state = desk.service.risk.drawdown
    assert state.stopped and state.since == at(1) and state.peak == pytest.approx(peak)


def test_the_stop_bar_delivered_again_does_not_cut_twice():
    desk = Desk(DRAWDOWN)
    desk.hold_a_and_b()
    event = make_event(bars(at(1), STOP_CLOSES), source="test", ts=T0)
    desk.service.handle(event)
    assert len(desk.read().orders) == 2
    desk.service.handle(event)  # the same event again ...
    desk.send(bars(at(1), STOP_CLOSES))  # ... and under a new event id
    out = desk.read()
    assert out.orders == [] and out.targets == [] and out.alerts == []
    assert [t.rebalance_id for t, _ in desk.service.pending] == []
    assert set(desk.service.open_orders) == {f"dd-{stamp(at(1))}-A", f"dd-{stamp(at(1))}-B"}


def test_a_bar_delivered_again_is_counted_once_by_the_risk_book():
    desk, _ = stopped_desk()
    returns = list(desk.service.state().risk.realised_returns)
    desk.send(bars(at(2), STOP_CLOSES))
    assert desk.service.risk.drawdown.bars_stopped == 1
    desk.send(bars(at(2), STOP_CLOSES))  # delivered again (at least once)
    assert desk.service.risk.drawdown.bars_stopped == 1
    assert len(desk.service.state().risk.realised_returns) == len(returns) + 1


def test_a_stopped_book_stays_in_cash_through_the_cool_down_then_re_enters():
    desk, _ = stopped_desk()
    cash = 50 * 8.7 + 25 * 17.3
    assert desk.service.book.cash == pytest.approx(cash)
    for bar, bars_stopped in ((2, 1), (3, 2)):
        desk.send(bars(at(bar), STOP_CLOSES), signal(at(bar)), tick(at(bar), f"rb-{bar}"))
        out = desk.read()
        assert out.orders == []
        [target] = out.targets
        assert target.weights == (0.0, 0.0, 0.0, 0.0) and "drawdown_hold" in target.risk_actions
        [held] = out.of_kind("drawdown_hold")
        assert f"cool-down: {bars_stopped} of 3 bars" in held.message
        assert "exposure held at 0%" in held.message
        assert held.metrics["bars_stopped"] == bars_stopped
        assert out.of_kind("drawdown_reentry") == []
        assert all(s.drawdown_stopped for s in out.snapshots)
    desk.send(bars(at(4), STOP_CLOSES), signal(at(4)), tick(at(4), "rb-4"))
    out = desk.read()
    [reentry] = out.of_kind("drawdown_reentry")
    assert reentry.severity == "info" and reentry.metrics["bars_stopped"] == 3
    assert out.of_kind("drawdown_stop") == []
    [target] = out.targets
    assert target.weights == (0.5, 0.5, 0.0, 0.0) and target.risk_actions == ("drawdown_reentry",)
    assert [(o.symbol, o.side, o.quantity, o.reduce_only) for o in out.orders] == [
        ("A", "buy", pytest.approx(cash / 2 / 8.7), False),
        ("B", "buy", pytest.approx(cash / 2 / 17.3), False),
    ]
    state = desk.service.risk.drawdown
    assert not state.stopped and state.peak == pytest.approx(cash)  # re-based at re-entry
    desk.fill_all(out.orders)
    assert [s.drawdown_stopped for s in desk.read().snapshots] == [False]


def test_the_market_trend_filter_holds_re_entry_while_the_market_falls():
    risk = RiskConfig(
        drawdown_stop=0.10,
        drawdown_exposure=0.0,
        reentry_cooldown_bars=2,
        reentry_filter="market-trend",
        reentry_trend_bars=3,
        var_limit=0.0,
        price_collar=0.0,
        max_data_age_bars=0,
    )
    desk, _ = stopped_desk(risk)
    closes = [np.array(FIRST_CLOSES), np.array(STOP_CLOSES)]
    for _ in (2, 3, 4):
        closes.append(closes[-1] * 0.98)  # falling 2% a bar
    closes.append(closes[-1] * 1.10)  # bar 5: up 10%
    matrix = np.array(closes)

    def trend_up(last_bar: int) -> bool:  # equal-weight index over the last 3 bars
        rows = matrix[last_bar - 2 : last_bar + 1]
        index = np.cumprod(np.r_[1.0, (rows[1:] / rows[:-1] - 1).mean(axis=1) + 1])
        return bool(index[-1] > index.mean())

    assert not trend_up(3) and not trend_up(4) and trend_up(5)
    for bar in (2, 3, 4):
        desk.send(bars(at(bar), matrix[bar]), signal(at(bar)), tick(at(bar), f"rb-{bar}"))
        out = desk.read()
        assert out.orders == [] and out.of_kind("drawdown_reentry") == []
        [held] = out.of_kind("drawdown_hold")
        if bar == 2:
            assert "cool-down: 1 of 2 bars" in held.message
        else:  # cool-down over (bars_stopped 2, 3): the market filter holds it
            assert "market filter" in held.message and "3-bar average" in held.message
    desk.send(bars(at(5), matrix[5]), signal(at(5)), tick(at(5), "rb-5"))
    out = desk.read()
    assert len(out.of_kind("drawdown_reentry")) == 1
    assert [(o.symbol, o.side) for o in out.orders] == [("A", "buy"), ("B", "buy")]


def test_a_stopped_book_restored_after_a_restart_is_still_stopped_and_acts_the_same():
    desk, _ = stopped_desk()
    copy = desk.restored()
    state, restored = desk.service.risk.drawdown, copy.service.risk.drawdown
    assert restored.stopped and restored.since == at(1) == state.since
    assert restored.peak == state.peak == pytest.approx(1000.0)
    assert restored.bars_stopped == state.bars_stopped == 0
    assert copy.service.book.cash == pytest.approx(desk.service.book.cash)
    for bar in (2, 3, 4):
        for each in (desk, copy):
            each.send(bars(at(bar), STOP_CLOSES), signal(at(bar)), tick(at(bar), f"rb-{bar}"))
        mine, theirs = desk.read(), copy.read()
        assert mine.kinds() == theirs.kinds()
        assert mine.orders == theirs.orders and mine.targets == theirs.targets
        expected = ["drawdown_reentry"] if bar == 4 else ["drawdown_hold"]
        assert theirs.kinds() == expected
        assert bool(theirs.orders) == (bar == 4)


# -- 4. VaR limit --------------------------------------------------------------------------------
VAR_BARS = 45
VAR_SCORES = (0.3, 1.2, -0.4, 0.8)  # top-k 0.5: B and D, 0.5 each
VAR_WINDOW = 30  # fewer than the 44 returns sent: the limit must read only the last 30


def var_risk(method: str) -> RiskConfig:
    return RiskConfig(
        var_limit=0.01,
        var_method=method,
        var_confidence=0.99,
        var_window=VAR_WINDOW,
        drawdown_stop=0.0,
        price_collar=0.0,
        max_data_age_bars=0,
    )


def decided_on_the_last_bar(risk: RiskConfig, closes: np.ndarray) -> tuple[Desk, Published]:
    """A desk fed every row of ``closes`` as a bar, then rb-var on the last with VAR_SCORES;
    what that rebalance published."""
    desk = Desk(risk)
    for i, row in enumerate(closes):
        desk.send(bars(at(i), row))
    last = at(len(closes) - 1)
    desk.send(signal(last, VAR_SCORES), tick(last, "rb-var"))
    return desk, desk.read()


@pytest.mark.parametrize("method", ["historical", "parametric", "cornish-fisher"])
def test_the_var_limit_scales_the_target_exactly_onto_the_limit(method):
    closes = random_walk(VAR_BARS, seed=11)
    desk, out = decided_on_the_last_bar(var_risk(method), closes)
    constructed = np.array([0.0, 0.5, 0.0, 0.5])
    returns = bar_returns(closes, VAR_WINDOW)
    var_before = var_of(returns @ constructed, method)
    assert var_before > 0.01  # the limit binds
    [target] = out.targets
    weights = np.array(target.weights)
    assert weights[[0, 2]].tolist() == [0.0, 0.0]
    k = weights[1] / 0.5
    assert 0 < k < 1 and weights[3] == pytest.approx(0.5 * k, rel=1e-12)
    assert k == pytest.approx(0.01 / var_before, rel=1e-9)
    assert var_of(returns @ weights, method) == pytest.approx(0.01, abs=1e-9)
    assert target.risk_actions == ("var_limit",)
    assert target.cash_weight == pytest.approx(1 - weights.sum())
    [alert] = out.of_kind("var_limit")
    assert alert.metrics["var"] == pytest.approx(var_before, abs=1e-6)
    assert alert.metrics["limit"] == 0.01 and alert.metrics["confidence"] == 0.99
    assert alert.action == f"exposure x{k:.4g}"
    # The orders buy the scaled weights of the 1000 cash at the decision bar's closes.
    assert [(o.symbol, o.quantity) for o in out.orders] == [
        ("B", pytest.approx(1000 * weights[1] / closes[-1, 1])),
        ("D", pytest.approx(1000 * weights[3] / closes[-1, 3])),
    ]
    # The post-trade snapshot reports the target's VaR after the limit.
    desk.fill_all(out.orders)
    [snapshot] = desk.read().snapshots
    assert snapshot.expected_var == pytest.approx(0.01, abs=1e-9)


def test_a_var_limit_that_does_not_bind_leaves_the_target_alone():
    closes = random_walk(VAR_BARS, seed=11)
    risk = msgspec.structs.replace(var_risk("historical"), var_limit=0.5)
    _, out = decided_on_the_last_bar(risk, closes)
    [target] = out.targets
    assert target.weights == (0.0, 0.5, 0.0, 0.5) and out.alerts == []


def test_the_var_limit_reads_no_bar_after_the_decision_bar():
    closes = random_walk(VAR_BARS, seed=11)
    desk = Desk(var_risk("historical"))
    for i, row in enumerate(closes):
        desk.send(bars(at(i), row))
    decision = at(VAR_BARS - 1)
    desk.send(signal(decision, VAR_SCORES))
    desk.send(bars(at(VAR_BARS), closes[-1] * np.array([0.7, 0.6, 1.0, 0.65])))  # a crash, later
    desk.send(tick(decision, "rb-var"))  # the tick for the earlier bar comes after it
    [target] = desk.read().targets
    returns = bar_returns(closes, VAR_WINDOW)  # up to the decision bar
    assert var_of(returns @ np.array(target.weights), "historical") == pytest.approx(0.01, abs=1e-9)


# -- 5. kill switch ------------------------------------------------------------------------------
KILL = RiskConfig(**NO_LIMITS)


def halt(flatten: bool = False) -> Control:
    return Control(command="halt", origin="operator", reason="test", flatten=flatten)


def trade_day(desk: Desk, bar: int, scores=(0.0, -1.0, 1.0, 0.5)) -> Published:
    """Bar, signal and tick for ``bar`` (scores that move the A+B book to C+D)."""
    desk.send(bars(at(bar), FIRST_CLOSES), signal(at(bar), scores), tick(at(bar), f"rb-{bar}"))
    return desk.read()


def test_an_operator_halt_stops_trading_across_a_restart_until_an_operators_resume():
    desk = Desk(KILL)
    desk.hold_a_and_b()
    desk.send(halt(), ts=at(0) + timedelta(hours=1))
    out = desk.read()
    [alert] = out.of_kind("kill_switch")
    assert alert.severity == "critical" and "test" in alert.message
    assert alert.metrics == {"positions": 2.0}
    assert out.orders == [] and desk.service.halted and desk.service.halt_origin == "operator"
    assert desk.service.risk.kill_switch is not None
    out = trade_day(desk, 1)
    assert out.orders == [] and out.targets == []
    assert [s.halted for s in out.snapshots] == [True]
    # A restart: the new instance's runtime is not halted, the kill switch is.
    copy = desk.restored()
    assert copy.service.halted is False
    switch = copy.service.risk.kill_switch
    assert switch is not None and switch.reason == "test" and not switch.flatten
    out = trade_day(copy, 2)
    assert out.orders == [] and out.targets == [] and [s.halted for s in out.snapshots] == [True]
    # A continued paper account's resume is the run's, not the operator's: still halted.
    copy.send(Control(command="resume"))
    assert copy.service.risk.kill_switch is not None
    out = trade_day(copy, 3)
    assert out.orders == [] and out.targets == [] and out.alerts == []
    # The operator's resume lifts it, and the next tick trades.
    copy.send(Control(command="resume", origin="operator", reason="all clear"))
    out = copy.read()
    [resumed] = out.of_kind("kill_switch")
    assert resumed.severity == "info" and "all clear" in resumed.message
    assert copy.service.risk.kill_switch is None and not copy.service.halted
    out = trade_day(copy, 4)
    assert [(o.symbol, o.side) for o in out.orders] == [
        ("A", "sell"),
        ("B", "sell"),
        ("C", "buy"),
        ("D", "buy"),
    ]
    copy.fill_all(out.orders)
    assert [s.halted for s in copy.read().snapshots] == [False]


def test_a_run_resume_does_not_lift_an_operator_halt_on_the_running_instance():
    desk = Desk(KILL)
    desk.hold_a_and_b()
    desk.send(halt())
    desk.send(Control(command="resume", origin="run"))
    assert desk.service.halted and desk.service.risk.kill_switch is not None
    assert trade_day(desk, 1).orders == []


def test_a_tick_waiting_for_its_bar_when_the_halt_comes_never_trades_after_the_resume():
    # The replay's tick can reach the rebalancer before its bar. Halted then resumed before
    # the bar arrives, that decision belongs to the halt: it must be dropped, not run late.
    desk = Desk(KILL)
    desk.hold_a_and_b()
    desk.send(tick(at(1), "rb-1"))  # waits: no bar, no signal for at(1) yet
    assert [t.rebalance_id for t, _ in desk.service.pending] == ["rb-1"]
    desk.send(halt())
    assert desk.service.pending == []
    desk.send(Control(command="resume", origin="operator", reason="over"))
    desk.send(bars(at(1), FIRST_CLOSES), signal(at(1), (0.0, -1.0, 1.0, 0.5)))
    out = desk.read()
    assert out.orders == [] and out.targets == []
    # The next tick trades as usual.
    assert [o.symbol for o in trade_day(desk, 2).orders] == ["A", "B", "C", "D"]


def test_a_halt_with_flatten_closes_every_position_with_reduce_only_orders():
    desk = Desk(KILL)
    desk.hold_a_and_b()
    desk.send(bars(at(1), (11.0, 21.0, 31.0, 41.0)))
    desk.read()
    when = at(1) + timedelta(hours=1)
    desk.send(halt(flatten=True), ts=when)
    out = desk.read()
    assert desk.service.halted
    [alert] = out.of_kind("kill_switch")
    assert "flattening every position" in alert.message and alert.action == "exposure x0"
    rebalance_id = f"halt-{when.strftime('%Y%m%dT%H%M%S%fZ')}"
    [target] = out.targets
    assert target.rebalance_id == rebalance_id and target.risk_actions == ("kill_switch",)
    assert target.weights == (0.0, 0.0)
    assert [(o.symbol, o.side, o.quantity, o.reduce_only) for o in out.orders] == [
        ("A", "sell", pytest.approx(50.0), True),
        ("B", "sell", pytest.approx(25.0), True),
    ]
    assert all(o.client_order_id.startswith("halt-") for o in out.orders)
    assert [o.reference_price for o in out.orders] == [11.0, 21.0]
    desk.fill_all(out.orders)
    assert desk.service.book.positions == {}
    [snapshot] = desk.read().snapshots
    assert snapshot.halted and snapshot.positions == {}


# -- 6. pre-trade checks -------------------------------------------------------------------------
def test_an_order_priced_outside_the_collar_of_the_latest_bar_is_blocked():
    desk = Desk(RiskConfig(**{**NO_LIMITS, "price_collar": 0.10}))
    desk.send(bars(T0, FIRST_CLOSES), signal(T0))
    desk.send(bars(at(1), (15.0, 20.5, 30.0, 40.0)))  # A 33% away, B 2.4%: a later bar first
    desk.send(tick(T0, "rb-0"))
    out = desk.read()
    assert [(o.symbol, o.quantity, o.reference_price) for o in out.orders] == [
        ("B", pytest.approx(25.0), 20.0)
    ]
    [blocked] = out.of_kind("pre_trade")
    assert (
        blocked.message.startswith("A: price collar")
        and "33.33% from the last price 15" in blocked.message
    )


def test_an_order_above_the_max_notional_is_blocked():
    desk = Desk(RiskConfig(**{**NO_LIMITS, "max_order_notional": 400.0}))
    desk.send(manual_fill("A", 30.0, 10.0))  # holds 300 of A: A buys 200 more, B 500
    desk.send(bars(T0, FIRST_CLOSES), signal(T0), tick(T0, "rb-0"))
    out = desk.read()
    assert [(o.symbol, o.side, o.quantity) for o in out.orders] == [
        ("A", "buy", pytest.approx(20.0))
    ]
    [blocked] = out.of_kind("pre_trade")
    assert blocked.message.startswith("B: max order notional") and "500.00" in blocked.message


@pytest.mark.parametrize(
    ("age", "stale"), [(2 * DAY, False), (2 * DAY + timedelta(seconds=1), True)]
)
def test_a_decision_bar_older_than_max_data_age_bars_is_skipped(age, stale):
    clock = SimulatedClock(T0)
    desk = Desk(RiskConfig(**{**NO_LIMITS, "max_data_age_bars": 2}), clock=clock)
    desk.send(bars(T0, FIRST_CLOSES), signal(T0))
    clock.advance_to(T0 + age)
    desk.send(tick(T0, "rb-0"))
    out = desk.read()
    if stale:
        assert out.orders == [] and out.targets == []
        [alert] = out.of_kind("data_quality")
        assert "stale market data" in alert.message and "172,801 s" in alert.message
        assert desk.service.last_due == {"test": T0}  # done: not run later
    else:
        assert [o.symbol for o in out.orders] == ["A", "B"] and out.alerts == []


# -- 7. optimiser fallback -----------------------------------------------------------------------
def optimiser_desk(on_failure: str) -> tuple[Desk, np.ndarray, float]:
    """A book holding ~60% in A while max_weight is 0.25 and turnover_cap 0.001: infeasible."""
    portfolio = PortfolioConfig(
        initial_cash=1000.0,
        construction="optimizer",
        max_weight=0.25,
        turnover_cap=0.001,
        covariance_window=20,
        on_failure=on_failure,
    )
    desk = Desk(RiskConfig(**NO_LIMITS), portfolio)
    closes = random_walk(25, seed=5)
    desk.send(manual_fill("A", 6.0, 100.0))  # 600 of A, 400 cash
    for i, row in enumerate(closes):
        desk.send(bars(at(i), row))
    last = at(len(closes) - 1)
    desk.send(signal(last, FIRST_SCORES), tick(last, "rb-opt"))
    weight_a = 6.0 * closes[-1, 0] / (400.0 + 6.0 * closes[-1, 0])
    assert weight_a - 0.25 > 0.001  # the cap forbids reaching the weight bound
    return desk, closes, weight_a


def test_an_infeasible_optimisation_keeps_the_previous_weights():
    desk, _, weight_a = optimiser_desk("previous")
    out = desk.read()
    [alert] = out.of_kind("optimiser_fallback")
    assert "previous weights" in alert.message and alert.metrics["assets"] == 4.0
    [target] = out.targets
    assert target.weights == pytest.approx((weight_a, 0.0, 0.0, 0.0), abs=1e-12)
    assert target.risk_actions == ("optimiser_fallback",)
    assert out.orders == [] and desk.service.book.positions == {"A": 6.0}


def test_an_infeasible_optimisation_with_on_failure_cash_sells_everything():
    desk, closes, _ = optimiser_desk("cash")
    out = desk.read()
    [alert] = out.of_kind("optimiser_fallback")
    assert "book in cash" in alert.message
    [target] = out.targets
    assert target.weights == (0.0, 0.0, 0.0, 0.0) and target.cash_weight == 1.0
    assert [(o.symbol, o.side, o.quantity, o.reduce_only) for o in out.orders] == [
        ("A", "sell", 6.0, True)
    ]
    assert out.orders[0].reference_price == closes[-1, 0]


# -- 8-9. snapshots ------------------------------------------------------------------------------
def test_no_snapshot_is_published_between_a_rebalance_and_its_fills():
    desk = Desk(RiskConfig(**NO_LIMITS))
    desk.send(bars(T0, FIRST_CLOSES), signal(T0), tick(T0, "rb-0"))
    out = desk.read()
    assert [s.asof for s in out.snapshots] == [T0]  # the bar's, before the tick
    a, b = out.orders
    desk.send(bars(at(1), (11.0, 19.0, 30.0, 40.0)))
    assert desk.read().snapshots == []  # the orders are out: the book is not what it will be
    desk.send(fill(a), done(a), done(b))
    assert desk.read().snapshots == []
    desk.send(fill(b))
    [snapshot] = desk.read().snapshots
    assert snapshot.asof == at(1)
    assert snapshot.positions == {"A": pytest.approx(50.0), "B": pytest.approx(25.0)}
    assert snapshot.cash == pytest.approx(0.0, abs=1e-9)
    assert snapshot.equity == pytest.approx(50 * 11.0 + 25 * 19.0)
    assert snapshot.prices == {"A": 11.0, "B": 19.0}
    desk.send(bars(at(2), (12.0, 19.0, 30.0, 40.0)))
    [snapshot] = desk.read().snapshots
    assert snapshot.asof == at(2) and snapshot.equity == pytest.approx(50 * 12.0 + 25 * 19.0)


def test_snapshots_report_the_realised_var_of_the_account_once_20_returns_exist():
    risk = RiskConfig(**{**NO_LIMITS, "var_window": 20})
    desk = Desk(risk)
    desk.hold_a_and_b()
    walk = random_walk(31, seed=3)
    closes = walk / walk[0] * np.array(FIRST_CLOSES)  # starts at the bar-0 closes
    snapshots = []
    for bar in range(1, 31):
        desk.send(bars(at(bar), closes[bar]))
        [snapshot] = desk.read().snapshots
        snapshots.append(snapshot)
    equity = pd.Series([1000.0] + [s.equity for s in snapshots])  # bar 0: 1000 in cash
    assert equity.iloc[1:].to_numpy() == pytest.approx(closes[1:, 0] * 50 + closes[1:, 1] * 25)
    returns = equity.pct_change().dropna()
    for bar, snapshot in enumerate(snapshots, start=1):
        assert not snapshot.halted and not snapshot.drawdown_stopped
        if bar < 20:
            assert snapshot.realised_var is None
            continue
        expected = -returns.iloc[:bar].iloc[-20:].quantile(0.01)
        assert snapshot.realised_var == pytest.approx(max(0.0, expected), abs=1e-12)
    assert snapshots[-1].realised_var > 0


def test_after_a_drawdown_cut_the_snapshots_expected_var_is_that_of_the_cash_target():
    closes = random_walk(VAR_BARS, seed=11)
    desk = Desk(msgspec.structs.replace(var_risk("historical"), drawdown_stop=0.05))
    for i, row in enumerate(closes):
        desk.send(bars(at(i), row))
    last = at(VAR_BARS - 1)
    desk.send(signal(last, VAR_SCORES), tick(last, "rb-var"))
    desk.fill_all(desk.read().orders)
    assert desk.read().snapshots[-1].expected_var == pytest.approx(0.01, abs=1e-9)
    desk.send(bars(at(VAR_BARS), closes[-1] * np.array([1.0, 0.5, 1.0, 0.5])))  # B, D halve
    cut = desk.read()
    assert cut.of_kind("drawdown_stop") and cut.targets[0].weights == (0.0, 0.0)
    desk.fill_all(cut.orders)
    [snapshot] = desk.read().snapshots
    assert snapshot.positions == {} and snapshot.drawdown_stopped
    assert snapshot.expected_var == 0.0

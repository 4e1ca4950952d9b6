"""The VaR stop ([risk] var_check = "every-bar"): the book's VaR is measured every bar, its
weights of that bar over the trailing returns, and a book above the limit by more than the band
is cut back onto the limit with reduce-only orders, on the bar it happens.

Every expected number is computed here with pandas from the prices the test sends.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from engine.config import RiskConfig
from tests.unit.services.test_rebalance_risk import (
    SYMBOLS,
    VAR_BARS,
    VAR_WINDOW,
    Desk,
    at,
    bar_returns,
    bars,
    decided_on_the_last_bar,
    random_walk,
    stamp,
    var_of,
    var_risk,
)

LIMIT = 0.01
CRASH = np.array([1.0, 0.9, 1.0, 0.92])  # the two held assets fall 10% and 8% in one bar


def watching(band: float = 0.1, check: str = "every-bar") -> RiskConfig:
    return msgspec.structs.replace(var_risk("historical"), var_check=check, var_stop_band=band)


def book_on_its_limit(risk: RiskConfig) -> tuple[Desk, np.ndarray]:
    """rb-var on bar 44 buys B and D scaled onto the VaR limit, filled at its closes."""
    closes = random_walk(VAR_BARS, seed=11)
    desk, out = decided_on_the_last_bar(risk, closes)
    assert [o.symbol for o in out.orders] == ["B", "D"] and out.of_kind("var_limit")
    desk.fill_all(out.orders)
    desk.read()
    return desk, closes


def book_var(desk: Desk, closes: np.ndarray) -> tuple[float, np.ndarray]:
    """The VaR of the desk's book at the last row of ``closes``, and its weights."""
    positions = desk.service.book.positions
    quantities = np.array([positions.get(s, 0.0) for s in SYMBOLS])
    values = quantities * closes[-1]
    weights = values / (desk.service.book.cash + values.sum())
    return var_of(bar_returns(closes, VAR_WINDOW) @ weights, "historical"), weights


def test_a_book_pushed_above_its_var_limit_is_cut_back_onto_it_on_that_bar():
    desk, closes = book_on_its_limit(watching())
    held = dict(desk.service.book.positions)
    crash = np.vstack([closes, closes[-1] * CRASH])
    desk.send(bars(at(VAR_BARS), crash[-1]))
    out = desk.read()
    value, _ = book_var(desk, crash)
    assert value > LIMIT * 1.1  # above the band: the stop acts
    keep = LIMIT / value
    rebalance_id = f"var-{stamp(at(VAR_BARS))}"
    [alert] = out.of_kind("var_stop")
    assert alert.rebalance_id == rebalance_id and alert.severity == "warning"
    assert alert.metrics["var"] == pytest.approx(value, abs=1e-6)
    assert alert.metrics["limit"] == LIMIT and alert.metrics["band"] == 0.1
    [target] = out.targets
    assert target.rebalance_id == rebalance_id and target.risk_actions == ("var_stop",)
    assert {o.symbol: (o.side, o.quantity, o.reduce_only) for o in out.orders} == {
        s: ("sell", pytest.approx(held[s] * (1 - keep), rel=1e-9), True) for s in ("B", "D")
    }
    desk.fill_all(out.orders)
    [snapshot] = desk.read().snapshots
    after, _ = book_var(desk, crash)
    assert after == pytest.approx(LIMIT, rel=1e-9)  # on the limit, the rest in cash
    assert snapshot.expected_var == pytest.approx(LIMIT, rel=1e-9)


def test_within_the_band_nothing_is_cut_and_the_snapshot_reports_the_books_var():
    desk, closes = book_on_its_limit(watching(band=1.0))
    crash = np.vstack([closes, closes[-1] * np.array([1.0, 0.96, 1.0, 0.96])])
    desk.send(bars(at(VAR_BARS), crash[-1]))
    out = desk.read()
    value, _ = book_var(desk, crash)
    assert LIMIT < value <= 2 * LIMIT  # above the limit, inside a band of 100%
    assert out.orders == [] and out.alerts == []
    [snapshot] = out.snapshots
    assert snapshot.expected_var == pytest.approx(value, abs=1e-6)


def test_checked_at_rebalances_only_the_same_bar_cuts_nothing():
    desk, closes = book_on_its_limit(watching(check="rebalance"))
    desk.send(bars(at(VAR_BARS), closes[-1] * CRASH))
    out = desk.read()
    assert out.orders == [] and out.alerts == []
    [snapshot] = out.snapshots
    assert snapshot.expected_var == pytest.approx(LIMIT, rel=1e-9)  # the target's, held


def test_the_stop_bar_delivered_again_does_not_cut_twice():
    desk, closes = book_on_its_limit(watching())
    crash_bar = bars(at(VAR_BARS), closes[-1] * CRASH)
    desk.send(crash_bar)
    first = desk.read()
    assert len(first.orders) == 2
    desk.send(crash_bar)  # delivered again, before and after the cut's fills
    desk.fill_all(first.orders)
    desk.send(crash_bar)
    again = desk.read()
    assert again.orders == [] and again.of_kind("var_stop") == []


def test_a_restarted_rebalancer_keeps_the_queued_cut_and_runs_it_once():
    desk, closes = book_on_its_limit(watching())
    desk.send(bars(at(VAR_BARS), closes[-1] * CRASH))
    orders = desk.read().orders
    copy = desk.restored()  # died after publishing the cut, before its fills
    assert set(copy.service.open_orders) == {o.client_order_id for o in orders}
    copy.fill_all(orders)
    copy.send(bars(at(VAR_BARS + 1), closes[-1] * CRASH))
    out = copy.read()
    assert out.orders == [] and out.of_kind("var_stop") == []


def test_a_rebalancer_killed_around_the_stop_bar_ends_like_the_uninterrupted_run():
    """Through the real ServiceRunner loop on a bus: the rebalancer dies just before and just
    after handling the bar that queues the cut, and after the cut's first fill; each restart
    resumes from its last commit, and the cut is sent once, the same cut."""
    from engine.bus import MemoryBus
    from engine.clock import SimulatedClock
    from engine.config import PortfolioConfig
    from engine.events import make_event
    from services.daemons.rebalance import RebalanceService
    from tests.restarts import drive
    from tests.unit.services.test_rebalance_risk import T0, done, fill, signal, tick

    risk = watching()
    closes = random_walk(VAR_BARS, seed=11)
    reference, first = decided_on_the_last_bar(risk, closes)
    reference.fill_all(first.orders)
    crash_bar = bars(at(VAR_BARS), closes[-1] * CRASH)
    reference.send(crash_bar)
    cut = reference.read().orders
    assert [o.rebalance_id for o in cut] == [f"var-{stamp(at(VAR_BARS))}"] * 2
    last = at(VAR_BARS - 1)
    payloads = [bars(at(i), row) for i, row in enumerate(closes)]
    payloads += [signal(last, (0.3, 1.2, -0.4, 0.8)), tick(last, "rb-var")]
    payloads += [p for o in first.orders for p in (fill(o), done(o))]
    payloads += [crash_bar, *(p for o in cut for p in (fill(o), done(o)))]
    payloads += [bars(at(VAR_BARS + 1), closes[-1] * CRASH)]
    events = [make_event(p, source="test", ts=T0) for p in payloads]
    stop_bar = VAR_BARS + 2 + 2 * len(first.orders)
    assert events[stop_bar].payload is crash_bar

    def make(bus):
        portfolio = PortfolioConfig(
            initial_cash=1000.0, construction="top-k", top_fraction=0.5, max_weight=1.0
        )
        return RebalanceService(bus, SimulatedClock(T0), portfolio, risk)

    plain = drive(MemoryBus(), make, events)
    bus = MemoryBus()
    killed = drive(bus, make, events, crash_before=[stop_bar], crash_after=[stop_bar, stop_bar + 1])
    assert killed.restarts == 3 and killed.restored == killed.committed
    assert killed.service.snapshot_state() == plain.service.snapshot_state()
    probe = bus.consumer("probe", "p", ["orders"])
    sent = [d.event.payload for d in probe.read(10_000)]
    assert [o for o in sent if o.rebalance_id.startswith("var-")] == cut

"""An auditor that reads a finished run's events from its bus and checks the books from the
ledger alone, independently of the services that produced them.

Effects may have been published more than once (a handler run again after its service died
between publishing and committing publishes the same orders, updates and fills again): the
checks count each by its business id, as the services do."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from brokers.simulated import DUPLICATE_SUBMIT
from engine.bus import Bus
from engine.events import (
    TERMINAL_ORDER_STATUSES,
    BarBlock,
    BarSet,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
)


@dataclass
class Ledger:
    """Every event of the topics an auditor reads, in stream order; blocks of bars and of
    marks are expanded into the bar sets and snapshots they stand for."""

    bars: list[BarSet] = field(default_factory=list)
    orders: list[OrderRequest] = field(default_factory=list)
    updates: list[OrderUpdate] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    snapshots: list[PortfolioSnapshot] = field(default_factory=list)


def read_ledger(bus: Bus) -> Ledger:
    """Read everything published so far through a fresh consumer group."""
    ledger = Ledger()
    sinks = {
        "bars": ledger.bars,
        "orders": ledger.orders,
        "order_updates": ledger.updates,
        "fills": ledger.fills,
        "portfolio": ledger.snapshots,
    }
    for topic, sink in sinks.items():
        consumer = bus.consumer("auditor", "auditor-1", [topic])
        while deliveries := consumer.read(10_000):
            for delivery in deliveries:
                assert delivery.event is not None, delivery.error
                payload = delivery.event.payload
                if isinstance(payload, (BarBlock, PortfolioMarks)):
                    sink.extend(payload.rows())
                else:
                    sink.append(payload)
            consumer.ack(deliveries)
    return ledger


def terminal_updates_per_order(ledger: Ledger) -> Counter:
    """Count distinct terminal updates per client order id, over every order requested.

    Not counted: the broker's answers to a duplicate submit (they report the state, they do
    not change it), and a terminal update published again identical (its handler run again);
    two different terminal updates of one order still count two.
    """
    counts: Counter = Counter({order.client_order_id: 0 for order in ledger.orders})
    seen: set[OrderUpdate] = set()
    for update in ledger.updates:
        if update.status not in TERMINAL_ORDER_STATUSES or update in seen:
            continue
        if (update.reason or "").startswith(DUPLICATE_SUBMIT):
            continue
        seen.add(update)
        counts[update.client_order_id] += 1
    return counts


def unique_fills(fills: list[Fill]) -> list[Fill]:
    """The fills in ledger order, each ``fill_id`` at its first appearance only."""
    seen: set[str] = set()
    out = []
    for fill in fills:
        if fill.fill_id not in seen:
            seen.add(fill.fill_id)
            out.append(fill)
    return out


def rebuild_and_compare(ledger: Ledger, initial_cash: float, tolerance: float = 1e-9) -> int:
    """Rebuild cash and positions from the first ``fills_applied`` distinct fills (by
    ``fill_id``) of the ledger for every snapshot, mark them at the last close (bars up to the
    snapshot time) and compare with the snapshot's cash, positions and equity. Return how many
    snapshots were checked."""
    bars_by_time: list[tuple[datetime, BarSet]] = [(b.close_time, b) for b in ledger.bars]
    fills = unique_fills(ledger.fills)
    for snapshot in ledger.snapshots:
        cash = initial_cash
        positions: dict[str, float] = {}
        fill_price: dict[str, float] = {}
        for fill in fills[: snapshot.fills_applied]:
            signed = fill.quantity if fill.side == "buy" else -fill.quantity
            cash -= signed * fill.price + fill.fee
            positions[fill.symbol] = positions.get(fill.symbol, 0.0) + signed
            fill_price[fill.symbol] = fill.price
        positions = {s: q for s, q in positions.items() if abs(q) > 1e-9}
        marks: dict[str, float] = {}
        for close_time, bars in bars_by_time:
            if close_time > snapshot.asof:
                break
            for symbol, close in zip(bars.symbols, bars.close):
                if symbol in positions:
                    marks[symbol] = close
        equity = cash + sum(q * marks.get(s, fill_price[s]) for s, q in positions.items())
        scale = max(1.0, abs(snapshot.equity))
        assert abs(snapshot.cash - cash) <= tolerance * scale, (snapshot.asof, snapshot.cash, cash)
        assert abs(snapshot.equity - equity) <= tolerance * scale, (
            snapshot.asof,
            snapshot.equity,
            equity,
        )
        assert set(snapshot.positions) == set(positions), snapshot.asof
        for symbol, quantity in positions.items():
            assert abs(snapshot.positions[symbol] - quantity) <= 1e-9 * max(1.0, abs(quantity))
        held_value = sum(q * snapshot.prices[s] for s, q in snapshot.positions.items())
        assert abs(snapshot.cash + held_value - snapshot.equity) <= tolerance * scale
    return len(ledger.snapshots)


def unbalanced_snapshots(ledger: Ledger, initial_cash: float, tolerance: float = 1e-9) -> list[str]:
    """The checks of ``rebuild_and_compare``, counted instead of asserted and made in one pass
    (a long run of hundreds of assets has too many snapshots, bars and fills to rebuild each
    snapshot from the start): return one line per snapshot that does not balance.

    Fills are applied and bars read forward, in ledger order, so each snapshot's cash is summed
    in the same order as ``rebuild_and_compare`` sums it (the same floats); a snapshot with
    fewer fills applied or an earlier time than the one before starts the rebuild over.
    """
    fills = unique_fills(ledger.fills)
    bars = ledger.bars
    problems: list[str] = []
    applied = next_bar = 0
    cash = initial_cash
    held: dict[str, float] = {}
    fill_price: dict[str, float] = {}
    last_close: dict[str, float] = {}
    last_asof: datetime | None = None
    for snapshot in ledger.snapshots:
        if snapshot.fills_applied < applied:
            applied, cash, held, fill_price = 0, initial_cash, {}, {}
        for fill in fills[applied : snapshot.fills_applied]:
            signed = fill.quantity if fill.side == "buy" else -fill.quantity
            cash -= signed * fill.price + fill.fee
            held[fill.symbol] = held.get(fill.symbol, 0.0) + signed
            fill_price[fill.symbol] = fill.price
        applied = min(snapshot.fills_applied, len(fills))
        if last_asof is not None and snapshot.asof < last_asof:
            next_bar, last_close = 0, {}
        last_asof = snapshot.asof
        while next_bar < len(bars) and bars[next_bar].close_time <= snapshot.asof:
            last_close.update(zip(bars[next_bar].symbols, bars[next_bar].close))
            next_bar += 1
        positions = {s: q for s, q in held.items() if abs(q) > 1e-9}
        equity = cash + sum(q * last_close.get(s, fill_price[s]) for s, q in positions.items())
        scale = max(1.0, abs(snapshot.equity))
        held_value = sum(q * snapshot.prices[s] for s, q in snapshot.positions.items())
        wrong = []
        if abs(snapshot.cash - cash) > tolerance * scale:
            wrong.append(f"cash {snapshot.cash} != {cash} rebuilt")
        if abs(snapshot.equity - equity) > tolerance * scale:
            wrong.append(f"equity {snapshot.equity} != {equity} rebuilt")
        if set(snapshot.positions) != set(positions):
            wrong.append(f"holds {sorted(set(snapshot.positions) ^ set(positions))} wrongly")
        elif any(
            abs(snapshot.positions[s] - q) > 1e-9 * max(1.0, abs(q)) for s, q in positions.items()
        ):
            wrong.append("position quantities differ from the fills'")
        if abs(snapshot.cash + held_value - snapshot.equity) > tolerance * scale:
            wrong.append("cash + positions at its prices != its equity")
        if wrong:
            problems.append(f"{snapshot.asof.isoformat()}: {'; '.join(wrong)}")
    return problems

"""The execution service on the ccxt broker dies in the middle of a batch of orders and is
started again: no order is lost, none is placed at the exchange twice, every fill is booked
once.

The adapter drives ccxt's real Binance class over the recorded exchange double
(tests/recorded_exchange.py); the service runs its real ``ServiceRunner`` loop on a real Redis.
A death is ``tests.restarts.Crash`` (a ``BaseException``: like SIGKILL, nothing after it runs
and nothing is committed), raised at the two moments that matter for an exchange:

- ``after-create``: the exchange has placed the order, its answer never reached the process
  (the order exists at the exchange, the service's records and the bus know nothing of it);
- ``after-handle``: the handler returned its order's updates and fills, staged, and the commit
  that would publish them with the acknowledgement never happened.

The restarted service (a new ccxt exchange object, a new adapter restored from the committed
state, the same consumer name) reads its pending messages first. The exchange double stays,
as the exchange does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from brokers.ccxt_broker import CcxtBroker, CcxtSettings
from engine.bus import RedisBus
from engine.clock import WallClock
from engine.events import Envelope, OrderRequest, make_event
from services.daemons.execution import ExecutionService
from services.runtime.loop import ServiceRunner
from tests.audit import read_ledger, terminal_updates_per_order, unique_fills
from tests.recorded_exchange import RecordedExchange
from tests.restarts import INSTANCE, SETTINGS, Crash

pytestmark = pytest.mark.redis
SYMBOL = "BTC/USDT"
PRICE = 4000.0
ORDERS = 24
CRASH_AT = 9  # the 9th order of the batch
CREATE = ("POST", "/api/v3/order")


class DyingExchange(RecordedExchange):
    """The exchange double, with the process dying right after the exchange applied the
    ``die_after_create``-th order create (0: never)."""

    die_after_create: int = 0

    def request(self, method, url, params=None, data=None, headers=None, **kwargs):
        response = super().request(method, url, params, data, headers, **kwargs)
        if (method, urlsplit(url).path) == CREATE and response.status_code == 200:
            creates = sum(1 for c in self.calls if (c.method, c.path) == CREATE)
            if creates == self.die_after_create:
                raise Crash(f"died after the exchange placed create {creates}")
        return response


def batch() -> list[OrderRequest]:
    """Buys, then sells of part of what was bought: each a whole number of lots."""
    orders = []
    for n in range(ORDERS):
        sell = n >= ORDERS * 2 // 3
        orders.append(
            OrderRequest(
                client_order_id=f"rb-ccxt-crash-{n:02d}",
                rebalance_id="rb-ccxt-crash",
                asof=datetime(2020, 6, 1, tzinfo=UTC),
                symbol=SYMBOL,
                side="sell" if sell else "buy",
                quantity=0.25 if sell else 0.1 + 0.01 * n,
                reference_price=PRICE,
            )
        )
    return orders


def runner_on(bus: RedisBus, venue: RecordedExchange) -> ServiceRunner:
    """What a (re)started execution process builds: a fresh ccxt exchange and adapter."""
    broker = CcxtBroker(
        venue.binance(), CcxtSettings(), sleep=lambda _: None, clock=lambda: venue.now_ms / 1000
    )
    return ServiceRunner(ExecutionService(bus, WallClock(), broker), SETTINGS, instance=INSTANCE)


def run_until_done(runner: ServiceRunner) -> None:
    """Run the loop until every order published is handled and acknowledged."""
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    worker.start()
    consumer = runner.loop.consumer
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and worker.is_alive():
            if runner.loop.stats.processed and consumer.backlog() == consumer.pending_count() == 0:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()


@pytest.mark.parametrize("death", ["after-create", "after-handle"])
def test_the_ccxt_execution_dies_mid_batch_and_neither_loses_nor_doubles_an_order(
    redis_url, namespace, death
):
    venue = DyingExchange(balances={"USDT": 100_000.0}, prices={SYMBOL: PRICE})
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    requests = batch()
    first = runner_on(bus, venue)
    first.start()  # its group exists before the orders are published
    bus.publish_many("orders", [make_event(o, source="test", corr="rb") for o in requests])

    if death == "after-create":
        venue.die_after_create = CRASH_AT
    else:
        handle = first.loop.handler

        def handler(event: Envelope) -> None:
            handle(event)
            payload = event.payload
            if isinstance(payload, OrderRequest) and payload.client_order_id.endswith(
                f"-{CRASH_AT - 1:02d}"
            ):
                raise Crash("died after the handler, before the commit")

        first.loop.handler = handler
    with pytest.raises(Crash):
        while True:
            first.loop.run_once()

    # What the death left: the crashed order placed at the exchange, not on the bus.
    placed_before = len(venue.orders)
    assert placed_before == CRASH_AT
    assert bus.topic_length("fills") == CRASH_AT - 1  # one trade each, the committed ones
    venue.die_after_create = 0

    restarted = runner_on(bus, venue)
    run_until_done(restarted)

    ledger = read_ledger(bus)
    ids = [o.client_order_id for o in requests]
    assert [o.client_order_id for o in ledger.orders] == ids
    # Exactly one order at the exchange per request: the crashed one was found, not re-sent.
    assert len(venue.orders) == ORDERS
    venue_ids = Counter(o.client_order_id for o in venue.orders.values())
    assert set(venue_ids.values()) == {1}
    assert len(venue.sent(*CREATE)) == ORDERS
    # Exactly one terminal state per order, every fill once, each order filled in full.
    assert set(terminal_updates_per_order(ledger).values()) == {1}
    fill_ids = Counter(f.fill_id for f in ledger.fills)
    assert [i for i, n in fill_ids.items() if n > 1] == []
    filled: Counter = Counter()
    for fill in unique_fills(ledger.fills):
        filled[fill.client_order_id] += fill.quantity
    assert filled == pytest.approx({o.client_order_id: o.quantity for o in requests})
    # The exchange's account moved once per order: bought less sold, fees in USDT.
    bought = sum(o.quantity for o in requests if o.side == "buy")
    sold = sum(o.quantity for o in requests if o.side == "sell")
    assert venue.free("BTC") == pytest.approx(bought - sold, abs=1e-9)
    fees = sum(f.fee for f in unique_fills(ledger.fills))
    assert venue.free("USDT") == pytest.approx(100_000.0 - (bought - sold) * PRICE - fees)
    # The restart handled the dead process's message again, then the rest, and nothing more.
    assert restarted.loop.stats.processed == ORDERS - (CRASH_AT - 1)

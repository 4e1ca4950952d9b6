"""Helpers of the restart tests: a process death in the middle of a consume loop, the events a
service handled in a reference run, and a driver that feeds them to one service through its
real ``ServiceRunner`` loop, killing and restarting it where told.

A death is ``Crash``, a ``BaseException``: like SIGKILL, nothing of the loop runs after it (no
retry, no commit, no ``except Exception``), and the message in hand stays pending under the
member's name. The service object is then dropped and a new one is started under the same
instance name, on the same bus, as a restarted process would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from brokers.simulated import SimulatedBroker
from engine.bus import Bus, ConsumeSettings
from engine.clock import SimulatedClock
from engine.config import Config, load_config
from engine.data import Panel, synthetic_panel
from engine.events import Envelope
from services.commands.backtest import Backtest
from services.daemons.execution import ExecutionService
from services.daemons.market_data import to_datetime
from services.daemons.rebalance import RebalanceService
from services.runtime.loop import Service, ServiceRunner

BARS = 90
INSTANCE = "box-1"
SETTINGS = ConsumeSettings(
    batch_size=16,
    block_ms=0,
    claim_idle_ms=3_600_000,  # nothing reclaimed: a restart gets its messages as its own pending
    reclaim_interval_ms=3_600_000,
    max_deliveries=5,
    retry_backoff_s=0,
)


def small_config(fill_price: str = "next_open", **environ: str) -> Config:
    """The run of tests/e2e/test_books_balance.py: trades twice a week, holds 30%."""
    return load_config(
        None,
        {
            "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
            "DEEPFACTOR_BROKER__FILL_PRICE": fill_price,
            "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
            **environ,
        },
    )


def small_panel() -> Panel:
    return synthetic_panel(8, BARS, seed=11)


def make_rebalance(fill_price: str) -> Callable[[Bus], RebalanceService]:
    """A builder of the rebalancer of ``small_config``, as a restarted process builds it."""
    portfolio = small_config(fill_price).portfolio
    start = to_datetime(small_panel().bar_open[0])
    return lambda bus: RebalanceService(bus, SimulatedClock(start), portfolio)


def make_execution(fill_price: str, **broker_options) -> Callable[[Bus], ExecutionService]:
    """A builder of the execution service of ``small_config``."""
    config = small_config(fill_price)
    start = to_datetime(small_panel().bar_open[0])

    def make(bus: Bus) -> ExecutionService:
        broker = SimulatedBroker(
            initial_cash=config.portfolio.initial_cash,
            fee_rate=config.broker.fee_rate,
            fill_price=config.broker.fill_price,
            fee_currency=config.broker.quote_currency,
            **broker_options,
        )
        return ExecutionService(bus, SimulatedClock(start), broker)

    return make


class Crash(BaseException):
    """The process dies here: nothing after it runs, nothing is committed."""


def handled_events(backtest: Backtest, names: Sequence[str]) -> dict[str, list[Envelope]]:
    """Run ``backtest`` and return, per service name, every event its handler was given, in
    the order it was given them: the input stream of that service in a whole run."""
    handled: dict[str, list[Envelope]] = {name: [] for name in names}
    for loop in backtest.pump.loops:
        name = loop.consumer.group
        if name in handled:
            inner = loop.handler

            def recording(event: Envelope, inner=inner, sink=handled[name]) -> None:
                sink.append(event)
                inner(event)

            loop.handler = recording
    backtest.run()
    return handled


@dataclass
class Restarted:
    """What a driven run left: the final service, and per restart what was checked."""

    service: Service
    started_from: bytes | None = None  # the state of the first object once started
    restarts: int = 0
    committed: list[bytes] = field(default_factory=list)  # per restart: last blob committed
    restored: list[bytes] = field(default_factory=list)  # per restart: the new object's state
    loaded: list[bytes | None] = field(default_factory=list)  # per restart: Bus.load_state


def drive(
    bus: Bus,
    make_service: Callable[[Bus], Service],
    events: Sequence[Envelope],
    crash_before: Sequence[int] = (),
    crash_after: Sequence[int] = (),
    first: int = 0,
) -> Restarted:
    """Publish ``events`` one at a time, each handled before the next is published, to a
    service run by a ``ServiceRunner`` loop on ``bus``. ``first``: the events before it were
    published and handled (or left pending) by a process that died; the run starts as its
    restart, with what it left pending.

    The process dies (``Crash``) just before the handler of event ``i`` in ``crash_before``
    (what stopping after event ``i - 1`` leaves) and just after the handler of event ``i`` in
    ``crash_after`` returned, its events staged in the outbox, before its commit. After each
    death a new service object is started under the same instance name and the run goes on.
    """
    before, after = set(crash_before), set(crash_after)
    position = {event.id: i for i, event in enumerate(events)}
    out: Restarted | None = None
    last_blob: list[bytes] = []

    def start() -> ServiceRunner:
        nonlocal out
        service = make_service(bus)
        started = ServiceRunner(service, SETTINGS, heartbeat_s=3600, instance=INSTANCE)
        if out is None:
            out = Restarted(service)
        else:
            out.service = service
        started.start()  # restores the committed state, as ServiceRunner.run does
        if out.started_from is None:
            out.started_from = service.snapshot_state()
        elif out.restarts:
            out.restored.append(service.snapshot_state() or b"")
        handle = service.handle
        snapshot = started.loop.snapshot

        def handler(event: Envelope) -> None:
            at = position.get(event.id, -1)
            if at in before:
                before.discard(at)
                raise Crash(f"before event {at}")
            handle(event)
            if at in after:
                after.discard(at)
                raise Crash(f"after event {at}")

        def snapshotting() -> bytes | None:
            blob = snapshot() if snapshot is not None else None
            if blob is not None:
                last_blob[:] = [blob]
            return blob

        started.loop.handler = handler
        started.loop.snapshot = snapshotting
        return started

    runner = start()

    def drain() -> None:
        nonlocal runner
        while True:
            try:
                if not runner.loop.run_once(block_ms=0):
                    return
            except Crash:
                assert out is not None
                out.restarts += 1
                out.committed.append(last_blob[0] if last_blob else b"")
                out.loaded.append(bus.load_state(runner.loop.consumer.group))
                runner = start()

    drain()  # what a dead predecessor left pending, first
    for event in events[first:]:
        bus.publish(event.topic, event)
        drain()
    assert out is not None
    assert runner.loop.consumer.pending_count() == 0
    return out

"""A whole paper run over Redis whose services are killed and started again: between steps of
the replay, and in the middle of a handler, after it emitted and before it committed. Each
new service object restores its committed state (rebalance, execution), rebuilds from what its
group consumed (factor-update, recorder) or has none (signal). The run ends where the
uninterrupted one ends: the same final equity, orders and fills, books that balance at every
snapshot, and the same summary from a recorder rebuilt after its restarts.

The harness is what ``deepfactor paper`` runs (every service a ``ServiceRunner`` thread, the
replay stepping one bar or tick at a time and waiting until every group has caught up), with
the services made again at chosen steps.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from engine.bus import RedisBus
from engine.bus.factory import consume_settings
from engine.clock import SimulatedClock
from engine.events import Envelope, Fill, RebalanceDue
from services.commands.backtest import Backtest
from services.daemons.market_data import MarketDataService, to_datetime
from services.runtime.assembly import Services, build_services, schedule_trigger
from services.runtime.loop import ServiceRunner
from services.runtime.quiescence import RedisQuiescence
from tests.audit import (
    Ledger,
    read_ledger,
    rebuild_and_compare,
    terminal_updates_per_order,
    unique_fills,
)
from tests.conftest import delete_namespace
from tests.restarts import BARS, Crash, small_config, small_panel

INSTANCE = "box-1"


def paper_config(redis_url: str):
    return small_config(DEEPFACTOR_BUS__REDIS_URL=redis_url, DEEPFACTOR_BUS__BLOCK_MS="20")


# (service, event it handled, fills it emitted handling it): die now, before the commit?
Fault = Callable[[str, Envelope, int], bool]


class PaperHarness:
    """Every consuming service as a ServiceRunner thread on one Redis namespace, fed by the
    replay one step at a time."""

    def __init__(self, redis_url: str, namespace: str, fault: Fault | None = None) -> None:
        self.config = paper_config(redis_url)
        self.panel = small_panel()
        self.bus = RedisBus(redis_url, namespace, give_up_after_s=10)
        self.clock = SimulatedClock(to_datetime(self.panel.bar_open[0]))
        self.market = MarketDataService(
            self.bus,
            self.panel,
            schedule_trigger(self.config),
            self.config.schedule.name,
            self.clock,
        )
        self.fault = fault
        self.crashes: list[str] = []
        self.restarts = 0
        self.services: Services = build_services(self.config, self.bus, self.clock)
        self.quiet = RedisQuiescence(self.bus, [(s.name, s.topics) for s in self.services.all()])
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self._start_all()

    def _run(self, runner: ServiceRunner, stop: threading.Event) -> None:
        try:
            runner.run(stop)
        except Crash as crash:  # the "process" died: its thread ends, nothing is committed
            self.crashes.append(f"{runner.service.name}: {crash}")

    def _start(self, field: str, stop: threading.Event) -> threading.Thread:
        service = getattr(self.services, field)
        runner = ServiceRunner(service, consume_settings(self.config), 3600, INSTANCE)
        fault, handle = self.fault, service.handle
        if fault is not None:

            def staged_fills() -> int:
                # Emits wait in the service's outbox until the commit (see Service.emit).
                return sum(len(events) for topic, events in service._outbox if topic == "fills")

            def handler(event: Envelope) -> None:
                fills = staged_fills()
                handle(event)
                if fault(service.name, event, staged_fills() - fills):
                    raise Crash(f"after {event.type} {event.corr}")

            runner.loop.handler = handler
        thread = threading.Thread(target=self._run, args=(runner, stop), name=service.name)
        thread.start()
        return thread

    def _start_all(self) -> None:
        self.stop = threading.Event()
        self.threads = [
            self._start(s.name.replace("-", "_"), self.stop) for s in self.services.all()
        ]

    def restart_all(self) -> None:
        """Stop every service and start new objects of them (same instance names)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()
        self.services = build_services(self.config, self.bus, self.clock)
        self.restarts += 1
        self._start_all()

    def wait(self) -> None:
        """Wait until every group caught up, restarting any service whose thread died."""
        for _ in range(30_000):
            if self.quiet.caught_up():
                return
            for position, thread in enumerate(self.threads):
                if not thread.is_alive():  # died: a new object, as a restarted process
                    field = self.services.all()[position].name.replace("-", "_")
                    fresh = build_services(self.config, self.bus, self.clock)
                    setattr(self.services, field, getattr(fresh, field))
                    self.threads[position] = self._start(field, self.stop)
            time.sleep(0.002)
        raise AssertionError("the services did not catch up")

    def run(self, restart_before_steps: set[int] = frozenset()) -> dict:
        try:
            for position, step in enumerate(self.market.steps()):
                if position in restart_before_steps:
                    self.restart_all()
                self.market.publish(step)
                self.wait()
            self.market.end_of_data()
            self.wait()
            return self.services.recorder.summary(
                self.config.portfolio.initial_cash,
                self.panel.periods_per_year(),
                self.market.bars_published,
            )
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(30)


@pytest.fixture(scope="module")
def uninterrupted(redis_url):
    """The run without restarts: its summary and ledger, and the backtest's summary."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    harness = PaperHarness(redis_url, namespace)
    try:
        summary = harness.run()
        ledger = read_ledger(harness.bus)
    finally:
        harness.bus.close()
        delete_namespace(redis_url, namespace)
    return summary, ledger, Backtest(paper_config(redis_url), small_panel()).run()


def check_like_uninterrupted(harness: PaperHarness, summary: dict, uninterrupted) -> Ledger:
    expected, expected_ledger, backtest = uninterrupted
    assert summary["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-9)
    assert summary["final_equity"] == pytest.approx(backtest["final_equity"], rel=1e-9)
    # The recorder rebuilt after its restarts summarises the whole run as the uninterrupted one.
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert summary[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert summary[key] == value, key
    ledger = read_ledger(harness.bus)
    orders = {o.client_order_id: o for o in reversed(ledger.orders)}
    assert list(orders.values())[::-1] == expected_ledger.orders
    assert unique_fills(ledger.fills) == expected_ledger.fills
    counts = terminal_updates_per_order(ledger)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert rebuild_and_compare(ledger, harness.config.portfolio.initial_cash) >= BARS
    assert ledger.snapshots[-1].equity == pytest.approx(expected_ledger.snapshots[-1].equity)
    assert harness.bus.dead_letters() == []
    return ledger


def test_every_service_restarted_between_steps_at_three_points_ends_like_the_uninterrupted_run(
    redis_url, namespace, uninterrupted
):
    harness = PaperHarness(redis_url, namespace)
    steps = len(list(harness.market.ticks())) + BARS
    points = {steps // 4, steps // 2, 3 * steps // 4}
    try:
        summary = harness.run(restart_before_steps=points)
        assert harness.restarts == 3
        check_like_uninterrupted(harness, summary, uninterrupted)
    finally:
        harness.bus.close()


def test_services_killed_after_emitting_before_committing_end_like_the_uninterrupted_run(
    redis_url, namespace, uninterrupted
):
    """The rebalancer dies right after its handler emitted the orders of a tick, the execution
    service right after emitting the fills of a bar, the recorder after a fill: each is started
    again and handles that message again, on the state it first handled it on. What the dead
    handler emitted was never published (it waited for the commit), so nothing is doubled."""
    died: set[str] = set()
    ticks = 0

    def fault(service: str, event: Envelope, fills_published: int) -> bool:
        nonlocal ticks
        payload = event.payload
        if service == "rebalance" and isinstance(payload, RebalanceDue):
            ticks += 1
            return ticks in (12, 20)  # ticks that trade (factor lookbacks are filled by then)
        if service in died:
            return False
        if (service == "execution" and fills_published and ticks >= 12) or (
            service == "recorder" and isinstance(payload, Fill)
        ):
            died.add(service)
            return True
        return False

    harness = PaperHarness(redis_url, namespace, fault)
    try:
        summary = harness.run()
        assert len(harness.crashes) == 4, harness.crashes
        ledger = check_like_uninterrupted(harness, summary, uninterrupted)
        assert len(ledger.orders) == len({o.client_order_id for o in ledger.orders})
        assert len(ledger.fills) == len(unique_fills(ledger.fills))
    finally:
        harness.bus.close()

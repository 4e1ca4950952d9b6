"""The runtime dispatches by type, batches what a handler emits, heartbeats, obeys control
events aimed at it, and stops after committing the batch in hand."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import ClassVar

import msgspec
import pytest
import structlog

from brokers.simulated import SimulatedBroker
from engine.bus import ConsumerLoop, ConsumeSettings, MemoryBus
from engine.clock import SimulatedClock
from engine.config import load_config
from engine.errors import ConfigError
from engine.events import (
    PAYLOAD_TYPES,
    Control,
    EventPayload,
    Heartbeat,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
    RiskAlert,
    make_event,
)
from engine.logging import configure_logging
from services.daemons.archive import ArchiveService
from services.daemons.execution import ExecutionService
from services.runtime.assembly import build_services
from services.runtime.loop import HandlerFailedError, Pump, Service, ServiceRunner
from services.runtime.standalone import RecorderProcess
from tests.events import heartbeat, order_request

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def market_order(sequence: int):
    event = order_request(sequence)
    payload = msgspec.structs.replace(event.payload, order_type="market", limit_price=None)
    return msgspec.structs.replace(event, payload=payload)


class Echo(Service):
    name = "echo"

    def __init__(self, bus, clock):
        self.seen: list[int] = []
        super().__init__(bus, clock)

    def handlers(self):
        return {Heartbeat: self.on_heartbeat}

    def on_heartbeat(self, event):
        if event.source != "other":
            return  # its own heartbeats come back on the topic it consumes
        self.seen.append(event.payload.processed)
        self.emit(
            [
                Control(command="resume", target="nobody"),
                Control(command="resume", target="nobody"),
            ],
            corr=event.corr,
        )


def test_topics_come_from_handled_types_plus_control():
    assert Echo(MemoryBus(), SimulatedClock(T0)).topics == ("control", "heartbeat")


def test_runner_handles_heartbeats_and_stops_with_nothing_pending():
    bus = MemoryBus()
    service = Echo(bus, SimulatedClock(T0))
    runner = ServiceRunner(
        service, ConsumeSettings(block_ms=10, claim_idle_ms=1000), heartbeat_s=0.05
    )
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    bus.publish_many("heartbeat", [heartbeat(i, source="other") for i in range(5)])
    deadline = time.monotonic() + 5
    while len(service.seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert service.seen[:5] == [0, 1, 2, 3, 4]
    assert runner.loop.consumer.pending_count() == 0
    beats = [
        d.event.payload
        for d in bus.consumer("probe", "p", ["heartbeat"]).read(1000)
        if d.event.payload.service == "echo"
    ]
    assert beats[0].status == "starting" and beats[-1].status == "stopping"
    assert beats[-1].processed >= 5
    assert bus.topic_length("control") == 2 * len(service.seen)


def test_control_aimed_elsewhere_is_ignored_and_halt_then_resume_toggle():
    service = Echo(MemoryBus(), SimulatedClock(T0))
    service.handle(make_event(Control(command="halt", target="signal"), source="cli"))
    assert not service.halted
    service.handle(make_event(Control(command="halt", target="echo"), source="cli"))
    assert service.halted
    service.handle(make_event(Control(command="resume"), source="cli"))
    assert not service.halted


def test_halted_execution_rejects_new_orders_and_cancels_queued_ones():
    bus = MemoryBus()
    execution = ExecutionService(bus, SimulatedClock(T0), SimulatedBroker(initial_cash=1e6))
    pump = Pump([execution])
    bus.publish("orders", market_order(1))  # queued: no bar yet
    pump.pump()
    bus.publish("control", make_event(Control(command="halt", reason="operator"), source="cli"))
    bus.publish("orders", market_order(2))
    pump.pump()
    updates = [d.event.payload for d in bus.consumer("probe", "p", ["order_updates"]).read(100)]
    statuses = [
        (u.client_order_id[-6:], u.status, u.reason) for u in updates if isinstance(u, OrderUpdate)
    ]
    assert statuses == [
        ("000001", "accepted", None),
        ("000001", "cancelled", "halted: operator"),
        ("000002", "rejected", "trading halted"),
    ]


def test_pump_stops_the_run_when_a_handler_fails():
    class Broken(Service):
        name = "broken"

        def handlers(self):
            return {OrderRequest: self.explode}

        def explode(self, event):
            raise ZeroDivisionError("bad maths")

    bus = MemoryBus()
    broken = Broken(bus, SimulatedClock(T0))
    calls = []
    broken._dispatch[OrderRequest] = lambda event: (calls.append(event), broken.explode(event))
    pump = Pump([broken])
    bus.publish("orders", order_request(1))
    with pytest.raises(
        HandlerFailedError, match="broken failed: handler raised ZeroDivisionError: bad maths"
    ):
        pump.pump()
    assert len(calls) == 1  # one attempt, no retry in place, no backoff


class Relay(Service):
    """Logs each heartbeat from elsewhere and passes its corr on in a risk alert."""

    name = "relay"

    def handlers(self):
        return {Heartbeat: self.on_heartbeat}

    def on_heartbeat(self, event):
        structlog.get_logger("test").info("relay.seen", n=event.payload.processed)
        self.emit([RiskAlert(kind="var_limit", severity="info", message="m")], corr=event.corr)


class Sink(Service):
    name = "sink"

    def handlers(self):
        return {RiskAlert: self.on_alert}

    def on_alert(self, event):
        structlog.get_logger("test").info("sink.seen")


def test_pump_logs_name_the_service_and_corr_inside_handlers_and_restore_the_callers():
    stream = io.StringIO()
    configure_logging("backtest", level="info", format="json", stream=stream)
    try:
        bus = MemoryBus()
        pump = Pump([Relay(bus, SimulatedClock(T0)), Sink(bus, SimulatedClock(T0))])
        bus.publish_many(
            "heartbeat",
            [
                msgspec.structs.replace(heartbeat(i, source="other"), corr=corr)
                for i, corr in enumerate(["rb-1", "rb-2"])
            ],
        )
        with structlog.contextvars.bound_contextvars(corr="outer"):
            assert pump.pump() == 4
            structlog.get_logger("test").info("caller.after")
        structlog.get_logger("test").info("caller.unbound")
    finally:
        structlog.reset_defaults()
    lines = [
        (line["event"], line["service"], line["corr"])
        for line in map(json.loads, stream.getvalue().splitlines())
    ]
    assert lines == [
        ("relay.seen", "relay", "rb-1"),
        ("relay.seen", "relay", "rb-2"),
        ("sink.seen", "sink", "rb-1"),
        ("sink.seen", "sink", "rb-2"),
        ("caller.after", "backtest", "outer"),
        ("caller.unbound", "backtest", None),
    ]


def test_consumer_is_named_service_and_instance_never_the_pid():
    settings = ConsumeSettings(block_ms=0)
    named = ServiceRunner(Echo(MemoryBus(), SimulatedClock(T0)), settings, instance="box-7")
    assert named.consumer_name == named.loop.consumer.name == "echo-box-7"
    default = ServiceRunner(Echo(MemoryBus(), SimulatedClock(T0)), settings)
    assert default.loop.consumer.name == f"echo-{socket.gethostname()}"
    assert not default.loop.consumer.name.endswith(f"-{os.getpid()}")


def test_heartbeats_name_the_consumer_and_carry_the_pid_apart():
    bus = MemoryBus()
    runner = ServiceRunner(Echo(bus, SimulatedClock(T0)), ConsumeSettings(), instance="box-7")
    runner._heartbeat("running")
    (beat,) = [d.event.payload for d in bus.consumer("probe", "p", ["heartbeat"]).read(10)]
    assert (beat.instance, beat.pid) == ("echo-box-7", os.getpid())


def test_restarted_runner_with_the_same_instance_handles_its_pending_messages_first():
    bus = MemoryBus()
    bus.publish_many("heartbeat", [heartbeat(i, source="other") for i in range(4)])
    first = ServiceRunner(Echo(bus, SimulatedClock(T0)), ConsumeSettings(), instance="box-7")
    first.loop.consumer.read(2)  # took 0 and 1, then died
    bus.publish_many("heartbeat", [heartbeat(i, source="other") for i in range(4, 6)])
    service = Echo(bus, SimulatedClock(T0))
    again = ServiceRunner(
        service, ConsumeSettings(block_ms=0, claim_idle_ms=60_000), instance="box-7"
    )
    while again.loop.run_once(block_ms=0):
        pass
    assert service.seen == [0, 1, 2, 3, 4, 5]


def test_run_instance_is_validated_as_a_name_and_the_error_names_the_key(tmp_path):
    assert load_config(None, environ={}).run.instance == ""
    good = load_config(None, environ={"DEEPFACTOR_RUN__INSTANCE": "node-2.eu_west"})
    assert good.run.instance == "node-2.eu_west"
    path = tmp_path / "paper.toml"
    for bad in ("two words", "a/b", "-leading-dash", "x" * 65):
        path.write_text(f'[run]\ninstance = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"\[run\] instance must be str matching"):
            load_config(path, environ={})


class Effectful(Echo):
    name = "effectful"
    commit_each_message = True


def test_commit_each_message_is_read_from_the_service_into_the_loop():
    assert Service.commit_each_message is False
    plain = ServiceRunner(Echo(MemoryBus(), SimulatedClock(T0)), ConsumeSettings())
    assert plain.loop.settings.commit_each_message is False
    effectful = ServiceRunner(Effectful(MemoryBus(), SimulatedClock(T0)), ConsumeSettings())
    assert effectful.loop.settings.commit_each_message is True
    assert effectful.loop.settings.max_deliveries == ConsumeSettings().max_deliveries


def test_runner_stop_cuts_a_retry_backoff_short_and_leaves_the_message_pending():
    class Stubborn(Echo):
        name = "stubborn"

        def on_heartbeat(self, event):
            if event.source == "other":
                raise ConnectionError("broker timeout")

    bus = MemoryBus()
    runner = ServiceRunner(
        Stubborn(bus, SimulatedClock(T0)),
        ConsumeSettings(block_ms=10, retry_backoff_s=30, retry_backoff_max_s=30),
        heartbeat_s=60,
    )
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    bus.publish("heartbeat", heartbeat(1, source="other"))
    deadline = time.monotonic() + 5
    while not runner.loop.stats.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()  # not stuck in the 30 s backoff
    assert runner.loop.stats.failed == 1 and runner.loop.stats.dead_lettered == 0
    assert runner.loop.consumer.pending_count() == 1


def portfolio_events():
    snapshot = PortfolioSnapshot(
        asof=T0,
        equity=100.0,
        cash=100.0,
        positions={},
        prices={},
        gross_exposure=0.0,
        high_water_mark=100.0,
        drawdown=0.0,
    )
    marks = PortfolioMarks(
        asof=(T0,),
        equity=(100.0,),
        cash=100.0,
        positions={},
        prices={},
        gross_exposure=(0.0,),
        high_water_mark=(100.0,),
        drawdown=(0.0,),
    )
    return [make_event(p, source="rebalance") for p in (snapshot, marks)]


class SnapshotsOnly(Service):
    """Reads ``portfolio`` but handles only snapshots (marks share the topic)."""

    name = "snapshots-only"

    def __init__(self, bus, clock):
        self.seen: list[str] = []
        super().__init__(bus, clock)

    def handlers(self):
        return {PortfolioSnapshot: lambda event: self.seen.append(event.type)}


def consume_portfolio(service: Service) -> ConsumerLoop:
    service.bus.publish_many("portfolio", portfolio_events())
    settings = ConsumeSettings(block_ms=0, claim_idle_ms=0, max_deliveries=2, retry_backoff_s=0)
    loop = ConsumerLoop(
        service.bus.consumer(service.name, "c1", service.topics), service.handle, settings
    )
    loop.run_once(block_ms=0)
    return loop


class MarksOnly(SnapshotsOnly):
    """Handles the block type only: its rows' type (snapshots) is not taken for it."""

    name = "marks-only"

    def handlers(self):
        return {PortfolioMarks: lambda event: self.seen.append(event.type)}


def test_a_type_neither_handled_nor_ignored_is_dead_lettered_naming_it():
    bus = MemoryBus()
    service = MarksOnly(bus, SimulatedClock(T0))
    loop = consume_portfolio(service)
    assert service.seen == ["PortfolioMarks"]
    assert loop.stats.dead_lettered == 1 and loop.consumer.pending_count() == 0
    (dead,) = bus.dead_letters()
    assert (dead.topic, dead.group) == ("portfolio", "marks-only")
    assert dead.reason.startswith(
        "handler raised TypeError: service marks-only does not handle PortfolioSnapshot "
        "(type 'PortfolioSnapshot') on topic 'portfolio'"
    )
    assert "MarksOnly.ignores" in dead.reason


def test_a_service_without_a_matrix_path_takes_a_block_as_its_rows():
    bus = MemoryBus()
    service = SnapshotsOnly(bus, SimulatedClock(T0))
    loop = consume_portfolio(service)
    # The snapshot, then the marks' one row, as a snapshot (the block adapter).
    assert service.seen == ["PortfolioSnapshot", "PortfolioSnapshot"]
    assert loop.stats.processed == 2 and bus.dead_letters() == []


def test_a_type_listed_in_ignores_is_acknowledged_with_no_effect():
    class SnapshotsIgnoringMarks(SnapshotsOnly):
        name = "ignores-marks"
        ignores: ClassVar[frozenset[type[EventPayload]]] = frozenset({PortfolioMarks})

    bus = MemoryBus()
    service = SnapshotsIgnoringMarks(bus, SimulatedClock(T0))  # ignored: not taken as rows
    loop = consume_portfolio(service)
    assert service.seen == ["PortfolioSnapshot"]
    assert loop.stats.processed == 2 and loop.stats.failed == 0
    assert bus.dead_letters() == [] and loop.consumer.pending_count() == 0


@pytest.mark.parametrize("compute_on", ["bar", "rebalance"])
def test_every_service_handles_or_ignores_every_type_on_the_topics_it_reads(compute_on, tmp_path):
    by_topic: dict[str, set[type]] = {}
    for payload in PAYLOAD_TYPES:
        by_topic.setdefault(payload.TOPIC, set()).add(payload)
    config = load_config(None, environ={"DEEPFACTOR_STRATEGY__COMPUTE_ON": compute_on})
    bus, clock = MemoryBus(), SimulatedClock(T0)
    services = [
        *build_services(config, bus, clock).all(),
        RecorderProcess(bus, clock, tmp_path, initial_cash=1e6),
    ]
    for service in services:
        accepted = set(service._dispatch) | set(getattr(service, "ignores", ()))
        for topic in service.topics:
            missing = sorted(t.__name__ for t in by_topic[topic] - accepted)
            assert not missing, f"{service.name} reads {topic!r} but not {missing}"


def test_the_archive_still_takes_every_type(tmp_path):
    bus = MemoryBus()
    archive = ArchiveService(bus, SimulatedClock(T0), tmp_path / "events.jsonl", ["portfolio"])
    loop = consume_portfolio(archive)
    assert loop.stats.processed == 2 and bus.dead_letters() == []

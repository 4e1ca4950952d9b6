"""The Prometheus metrics of a service process: fed from the events a service commits, its
handler times and its heartbeats, read back from the exposition text as Prometheus reads it."""

from __future__ import annotations

import math
import socket
import threading
import urllib.request
from datetime import timedelta

import msgspec
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from engine.bus import ConsumeSettings, MemoryBus
from engine.clock import SimulatedClock
from engine.config import MetricsConfig, load_config
from engine.config.schema import METRICS_SERVICES
from engine.events import (
    Envelope,
    EventPayload,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
    make_event,
)
from services.runtime.loop import Service, ServiceRunner
from services.runtime.metrics import ProcessMetrics, serve_metrics
from tests.events import T0, order_request


def read(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` whose labels include ``labels``; None when absent."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else None


def exposition(metrics: ProcessMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def fill(sequence: int, quantity: float, price: float) -> Fill:
    return Fill(
        fill_id=f"fill-{sequence}",
        client_order_id=f"order-{sequence}",
        symbol="BTC/USDT",
        side="buy",
        quantity=quantity,
        price=price,
        fee=0.0,
        fee_currency="USDT",
        executed_at=T0,
    )


def snapshot(equity: float, drawdown: float, **var: float | None) -> PortfolioSnapshot:
    return PortfolioSnapshot(
        asof=T0,
        equity=equity,
        cash=equity,
        positions={},
        prices={},
        gross_exposure=0.0,
        high_water_mark=equity / (1 - drawdown),
        drawdown=drawdown,
        **var,
    )


def events(*payloads: EventPayload) -> list[Envelope]:
    return [make_event(p, source="test", ts=T0) for p in payloads]


def test_committed_events_count_orders_rejects_fills_and_mark_the_account():
    metrics = ProcessMetrics()
    view = metrics.service("execution", "box-1")
    orders = [order_request(i).payload for i in range(5)]
    statuses = ["accepted", "rejected", "filled", "rejected", "cancelled", "rejected"]
    updates = [OrderUpdate(client_order_id=f"o-{i}", status=s) for i, s in enumerate(statuses)]
    fills = [fill(i, 0.5 + i, 100.0 + 3 * i) for i in range(4)]
    # Two commits: counters add up across them, gauges keep the latest snapshot's figures.
    view.committed(events(*orders[:2], *updates[:3], *fills[:1], snapshot(1000.0, 0.1)))
    view.committed(
        events(
            *orders[2:],
            *updates[3:],
            *fills[1:],
            snapshot(900.0, 0.2, realised_var=0.031, expected_var=None),
        )
    )
    text = exposition(metrics)
    labels = {"service": "execution", "instance": "box-1"}
    assert read(text, "deepfactor_orders_total", **labels) == len(orders)
    assert read(text, "deepfactor_rejects_total", **labels) == statuses.count("rejected")
    assert read(text, "deepfactor_fills_total", **labels) == len(fills)
    notional = math.fsum(f.quantity * f.price for f in fills)
    assert read(text, "deepfactor_fill_notional_total", **labels) == pytest.approx(notional)
    assert read(text, "deepfactor_equity", **labels) == 900.0
    assert read(text, "deepfactor_drawdown", **labels) == 0.2
    assert read(text, "deepfactor_var", kind="realised", **labels) == 0.031
    assert read(text, "deepfactor_var", kind="expected", **labels) is None  # never carried one


def test_marks_set_equity_and_drawdown_from_their_last_bar():
    metrics = ProcessMetrics()
    marks = PortfolioMarks(
        asof=(T0, T0 + timedelta(days=1)),
        equity=(1010.0, 990.0),
        cash=500.0,
        positions={"BTC/USDT": 5.0},
        prices={"BTC/USDT": (102.0, 98.0)},
        gross_exposure=(0.5, 0.49),
        high_water_mark=(1010.0, 1010.0),
        drawdown=(0.0, 20.0 / 1010.0),
    )
    metrics.service("rebalance", "box-1").committed(events(marks))
    text = exposition(metrics)
    assert read(text, "deepfactor_equity", service="rebalance") == 990.0
    assert read(text, "deepfactor_drawdown", service="rebalance") == pytest.approx(20 / 1010)


def test_an_empty_instance_is_the_host_name_as_in_the_consumer_name():
    assert ProcessMetrics().service("signal", "").instance == socket.gethostname()


def test_a_service_shows_only_the_series_it_produced():
    metrics = ProcessMetrics()
    metrics.service("signal", "box-1").message_handled("FactorSnapshot", 0.002)
    text = exposition(metrics)
    assert read(text, "deepfactor_messages_total", service="signal") == 1
    for name in ("deepfactor_equity", "deepfactor_orders_total", "deepfactor_stream_lag"):
        assert read(text, name, service="signal") is None


def test_metrics_live_in_their_own_registry_never_the_global_one():
    ProcessMetrics().service("signal", "box-1").message_handled("FactorSnapshot", 0.001)
    ProcessMetrics()  # a second set in the same interpreter registers without a clash
    assert "deepfactor_messages_total" not in generate_latest(REGISTRY).decode()


class Broker(Service):
    """Answers each order: rejected above ``limit``, else accepted and filled at 100; raises
    once on the order numbered ``fail_once``; sets ``stop`` after ``expected`` orders."""

    name = "execution"
    commit_each_message = True

    def __init__(self, bus, clock, limit: float, expected: int, fail_once: int) -> None:
        self.limit, self.expected, self.fail_once = limit, expected, fail_once
        self.handled = 0
        self.stop = threading.Event()
        super().__init__(bus, clock)

    def handlers(self):
        return {OrderRequest: self.on_order}

    def on_order(self, event: Envelope) -> None:
        order = event.payload
        if order.client_order_id.endswith(f"-{self.fail_once:06d}"):
            self.fail_once = -1
            raise RuntimeError("broker unreachable")
        if order.quantity > self.limit:
            out: list[EventPayload] = [
                OrderUpdate(client_order_id=order.client_order_id, status="rejected")
            ]
        else:
            out = [
                OrderUpdate(client_order_id=order.client_order_id, status="accepted"),
                fill(self.handled, order.quantity, 100.0),
            ]
        self.emit(out, corr=event.corr)
        self.handled += 1
        if self.handled == self.expected:
            self.stop.set()


def test_the_runner_reports_handler_times_commits_and_heartbeats():
    bus = MemoryBus()
    quantities = [0.5, 3.0, 1.5, 4.0, 0.25, 2.5, 1.0]  # 4 filled, 3 rejected
    limit = 2.0
    service = Broker(bus, SimulatedClock(T0), limit, expected=len(quantities), fail_once=2)
    metrics = ProcessMetrics()
    view = metrics.service(service.name, "box-1")
    settings = ConsumeSettings(block_ms=0, retry_backoff_s=0)
    runner = ServiceRunner(service, settings, heartbeat_s=3600, instance="box-1", metrics=view)
    orders = [
        msgspec.structs.replace(
            order_request(i), payload=msgspec.structs.replace(order_request(i).payload, quantity=q)
        )
        for i, q in enumerate(quantities)
    ]
    bus.publish_many("orders", orders)
    runner.run(service.stop)
    text = exposition(metrics)
    labels = {"service": "execution", "instance": "box-1"}
    accepted = [q for q in quantities if q <= limit]
    assert read(text, "deepfactor_rejects_total", **labels) == len(quantities) - len(accepted)
    assert read(text, "deepfactor_fills_total", **labels) == len(accepted)
    assert read(text, "deepfactor_fill_notional_total", **labels) == pytest.approx(
        100.0 * sum(accepted)
    )
    assert read(text, "deepfactor_orders_total", **labels) is None  # it emits none
    by_type = {**labels, "event_type": "OrderRequest"}
    assert read(text, "deepfactor_messages_total", **by_type) == len(quantities)
    assert read(text, "deepfactor_handler_errors_total", **by_type) == 1
    # Every call is timed, the failed attempt too.
    assert read(text, "deepfactor_handler_seconds_count", **by_type) == len(quantities) + 1
    assert read(text, "deepfactor_handler_seconds_sum", **by_type) > 0
    # The stopping heartbeat: everything acknowledged; the memory bus cannot tell the lag.
    assert read(text, "deepfactor_pending", **labels) == 0
    assert read(text, "deepfactor_stream_lag", **labels) is None


def test_a_runner_without_metrics_calls_the_service_directly():
    service = Broker(MemoryBus(), SimulatedClock(T0), 1.0, expected=1, fail_once=-1)
    runner = ServiceRunner(service, ConsumeSettings(block_ms=0))
    assert runner.metrics is None
    assert runner.loop.handler == service.handle_staged
    assert runner.loop.outbox == service.take_outbox


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (as the metrics server binds: a connection
    of a closed server lingering in TIME_WAIT does not hold the port)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_disabled_metrics_open_no_port_and_enabled_ones_serve_until_the_block_ends():
    port = free_port()
    disabled = MetricsConfig(process_port=port)
    threads = threading.active_count()
    with serve_metrics(disabled, "signal") as metrics:
        assert metrics is None
        assert port_is_free(port) and threading.active_count() == threads
    enabled = MetricsConfig(enabled=True, process_port=port)
    with capture_logs() as logs, serve_metrics(enabled, "signal") as metrics:
        assert metrics is not None
        metrics.service("signal", "box-1").message_handled("FactorSnapshot", 0.01)
        assert not port_is_free(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert read(text, "deepfactor_messages_total", service="signal") == 1
    assert port_is_free(port)  # released, not only no longer answered
    serving = [line for line in logs if line["event"] == "metrics.serving"]
    assert serving == [
        {
            "event": "metrics.serving",
            "log_level": "info",
            "host": "127.0.0.1",
            "port": port,
            "service": "signal",
        }
    ]


def test_a_taken_port_is_logged_and_the_service_runs_on_without_an_endpoint():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = MetricsConfig(enabled=True, process_port=port)
        with capture_logs() as logs, serve_metrics(config, "rebalance") as metrics:
            assert metrics is not None  # still counts: the loop reports to it as usual
    (line,) = [line for line in logs if line["event"] == "metrics.unavailable"]
    assert (line["log_level"], line["port"], line["service"]) == ("error", port, "rebalance")


def test_each_service_process_has_its_own_port_by_a_fixed_rule():
    config = MetricsConfig(port=9000)
    ports = {service: config.port_of(service) for service in METRICS_SERVICES}
    assert ports == {
        "market-data": 9000,
        "factor-update": 9001,
        "signal": 9002,
        "rebalance": 9003,
        "execution": 9004,
        "scheduler": 9005,
        "recorder": 9006,
        "archive": 9007,
    }
    assert config.port_of("paper") == 9000  # every service of the process on one endpoint
    pinned = load_config(None, environ={"DEEPFACTOR_METRICS__PROCESS_PORT": "9100"}).metrics
    assert {pinned.port_of(s) for s in (*METRICS_SERVICES, "paper")} == {9100}

"""Prometheus metrics of a service process, served on ``/metrics`` when ``[metrics] enabled``.

What a service emits feeds them: a PortfolioSnapshot (or PortfolioMarks) sets equity, drawdown
and VaR, an OrderRequest counts an order, an OrderUpdate with status ``rejected`` a reject, a
Fill a fill. The service loop (``services.runtime.loop.ServiceRunner``) reports each handled
message with its handler time, the events its commits appended, and each heartbeat's lag and
pending count. Every series carries ``service`` and ``instance`` labels, so one endpoint can
serve the several services of ``deepfactor paper``.

The metrics live in a registry of their own, never prometheus_client's global one: two
processes' worth of metrics in one interpreter (tests, ``paper``) stay apart, and the global
registry's process collectors are not served.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.config import MetricsConfig
from engine.events import (
    Envelope,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
)

log = structlog.get_logger("services.runtime.metrics")

LABELS = ("service", "instance")
# From a heartbeat written to the event log (tens of microseconds) to an optimiser solve or a
# model's first load (seconds): prometheus_client's default buckets start at 5 ms, where most
# handlers have long finished (a paper run's median is well under a millisecond).
HANDLER_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class ProcessMetrics:
    """The metric families of one process, in a registry of its own; ``service`` gives the
    view of one service, with its labels bound."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.equity = Gauge(
            "deepfactor_equity",
            "Account equity of the latest PortfolioSnapshot emitted (quote currency).",
            LABELS,
            registry=registry,
        )
        self.drawdown = Gauge(
            "deepfactor_drawdown",
            "Drawdown of the latest PortfolioSnapshot emitted (fraction below the high-water "
            "mark).",
            LABELS,
            registry=registry,
        )
        self.var = Gauge(
            "deepfactor_var",
            "VaR of the latest PortfolioSnapshot that carried one, as a loss fraction of equity "
            "at the [risk] confidence and horizon; kind: realised (the account's own returns) "
            "or expected (the last target by the risk model).",
            (*LABELS, "kind"),
            registry=registry,
        )
        self.orders = Counter(
            "deepfactor_orders",
            "OrderRequests emitted.",
            LABELS,
            registry=registry,
        )
        self.rejects = Counter(
            "deepfactor_rejects",
            "OrderUpdates emitted with status rejected.",
            LABELS,
            registry=registry,
        )
        self.fills = Counter(
            "deepfactor_fills",
            "Fills emitted.",
            LABELS,
            registry=registry,
        )
        self.fill_notional = Counter(
            "deepfactor_fill_notional",
            "Quantity times price of the fills emitted (quote currency).",
            LABELS,
            registry=registry,
        )
        self.messages = Counter(
            "deepfactor_messages",
            "Messages handled, by event type (duplicates skipped unhandled are not counted).",
            (*LABELS, "event_type"),
            registry=registry,
        )
        self.handler_errors = Counter(
            "deepfactor_handler_errors",
            "Handler calls that raised (each attempt of a retried message counts).",
            (*LABELS, "event_type"),
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "deepfactor_handler_seconds",
            "Time in the service's handler per call, by event type.",
            (*LABELS, "event_type"),
            registry=registry,
            buckets=HANDLER_BUCKETS,
        )
        self.stream_lag = Gauge(
            "deepfactor_stream_lag",
            "Entries on the service group's streams not yet delivered to it, at the last "
            "heartbeat (absent before Redis 7).",
            LABELS,
            registry=registry,
        )
        self.pending = Gauge(
            "deepfactor_pending",
            "Entries delivered to the service group but not acknowledged, at the last heartbeat.",
            LABELS,
            registry=registry,
        )

    def service(self, name: str, instance: str) -> ServiceMetrics:
        """Return the view of service ``name`` of ``instance`` (``[run] instance``; empty: the
        host name, as the service's consumer is named) on these families."""
        return ServiceMetrics(self, name, instance or socket.gethostname())


class ServiceMetrics:
    """One service's view of the process metrics: the ``ServiceObserver`` its
    ``ServiceRunner`` reports to.

    A series appears at its first observation, so a service shows only what it produces (no
    equity of 0 from a service that never marks the account).
    """

    def __init__(self, families: ProcessMetrics, service: str, instance: str) -> None:
        self.families = families
        self.service = service
        self.instance = instance
        self._labels = (service, instance)

    def message_handled(self, event_type: str, seconds: float, failed: bool = False) -> None:
        """Count one handler call on an event of ``event_type`` and its time."""
        families, labels = self.families, (*self._labels, event_type)
        families.handler_seconds.labels(*labels).observe(seconds)
        if failed:
            families.handler_errors.labels(*labels).inc()
        else:
            families.messages.labels(*labels).inc()

    def committed(self, events: Iterable[Envelope]) -> None:
        """Take in the events a commit appended to the bus."""
        families, labels = self.families, self._labels
        orders = rejects = fills = 0
        notional = 0.0
        for event in events:
            payload = event.payload
            if isinstance(payload, OrderRequest):
                orders += 1
            elif isinstance(payload, OrderUpdate):
                rejects += payload.status == "rejected"
            elif isinstance(payload, Fill):
                fills += 1
                notional += payload.quantity * payload.price
            elif isinstance(payload, PortfolioSnapshot):
                self._mark(payload.equity, payload.drawdown)
                if payload.realised_var is not None:
                    families.var.labels(*labels, "realised").set(payload.realised_var)
                if payload.expected_var is not None:
                    families.var.labels(*labels, "expected").set(payload.expected_var)
            elif isinstance(payload, PortfolioMarks) and payload.equity:
                self._mark(payload.equity[-1], payload.drawdown[-1])
        if orders:
            families.orders.labels(*labels).inc(orders)
        if rejects:
            families.rejects.labels(*labels).inc(rejects)
        if fills:
            families.fills.labels(*labels).inc(fills)
            families.fill_notional.labels(*labels).inc(notional)

    def _mark(self, equity: float, drawdown: float) -> None:
        self.families.equity.labels(*self._labels).set(equity)
        self.families.drawdown.labels(*self._labels).set(drawdown)

    def heartbeat(self, lag: int | None, pending: int) -> None:
        """Take in a heartbeat's figures (``lag`` None: the bus cannot tell)."""
        if lag is not None:
            self.families.stream_lag.labels(*self._labels).set(lag)
        self.families.pending.labels(*self._labels).set(pending)


class MetricsServer:
    """prometheus_client's HTTP server on one registry, in a daemon thread, that ``close``
    stops and whose port it releases (``port``: the one bound, for a request of port 0)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        # shutdown() only ends the loop; the socket stays bound until server_close().
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve_metrics(
    config: MetricsConfig, process: str, families: ProcessMetrics | None = None
) -> Iterator[ProcessMetrics | None]:
    """Serve ``families`` (new ones by default) on ``config.port_of(process)`` while in the
    block, and yield them; yield None, opening nothing, when ``[metrics]`` is not enabled.

    A port that cannot be bound (taken by another process) is logged as
    ``metrics.unavailable`` and the process runs on without an endpoint: monitoring must not
    stop trading, and a scrape that fails is what alerts on it.
    """
    if not config.enabled:
        yield None
        return
    families = families or ProcessMetrics()
    port = config.port_of(process)
    try:
        server = MetricsServer(families.registry, config.host, port)
    except OSError as error:
        log.error(
            "metrics.unavailable",
            host=config.host,
            port=port,
            service=process,
            error=str(error),
        )
        yield families
        return
    log.info("metrics.serving", host=config.host, port=server.port, service=process)
    try:
        yield families
    finally:
        server.close()

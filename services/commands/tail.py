"""``deepfactor tail [TOPIC ...]``: follow an account's event streams as readable lines.

It reads with plain ``XREAD`` (no consumer group): watching never takes a message from a
service, acknowledges nothing and leaves no trace in Redis. Each line is the event's time, its
topic and type, then the few fields an operator looks at (an order's side, size and symbol; a
fill's price and fee; the equity and drawdown of a snapshot...). ``--json`` prints each event
as the JSON it travels as, for ``jq``. A message that does not decode is shown as such, with
its stream id, never skipped silently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from engine.bus import keys, stream_id_order
from engine.bus.redis_streams import RedisBus
from engine.errors import EventDecodeError, UsageError
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    FactorSnapshot,
    Fill,
    Heartbeat,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
    RebalanceDue,
    RiskAlert,
    Signal,
    TargetPortfolio,
)
from engine.events.base import Envelope
from engine.events.codec import PAYLOAD_TYPES, decode

TOPICS = tuple(dict.fromkeys(payload.TOPIC for payload in PAYLOAD_TYPES))
# What `tail` follows when no topic is named: everything but the liveness chatter.
DEFAULT_TOPICS = tuple(topic for topic in TOPICS if topic != Heartbeat.TOPIC)


def check_topics(names: Sequence[str]) -> tuple[str, ...]:
    """The topics to follow (``DEFAULT_TOPICS`` when none is named).

    Raises
    ------
    UsageError
        A name is not a topic; the message lists the topics.
    """
    unknown = [name for name in names if name not in TOPICS]
    if unknown:
        raise UsageError(
            f"unknown topic {', '.join(map(repr, unknown))}; topics: {', '.join(TOPICS)}"
        )
    return tuple(dict.fromkeys(names)) or DEFAULT_TOPICS


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _summary_of(payload: Any) -> str:  # noqa: C901 - one branch per event type, read as a table
    """The fields of ``payload`` an operator reads first."""
    match payload:
        case BarSet():
            return f"{payload.bar_open:%Y-%m-%d %H:%M} {len(payload.symbols)} symbols"
        case BarBlock():
            return f"{len(payload.bar_open)} bars from {payload.bar_open[0]:%Y-%m-%d}"
        case FactorSnapshot():
            return f"asof {payload.asof:%Y-%m-%d %H:%M} {len(payload.factor_names)} factors"
        case Signal():
            fallback = " FALLBACK" if payload.fallback else ""
            chosen = ",".join(payload.selected) or "-"
            return f"model {payload.model}{fallback} factors {chosen}"
        case RebalanceDue():
            return f"{payload.rebalance_id} decides on {payload.decision_time:%Y-%m-%d %H:%M}"
        case TargetPortfolio():
            held = sum(1 for w in payload.weights if w)
            gross = sum(abs(w) for w in payload.weights)
            limits = f" limits {','.join(payload.risk_actions)}" if payload.risk_actions else ""
            return f"{payload.rebalance_id} {held} positions gross {gross:.2f}{limits}"
        case OrderRequest():
            price = f" @ {payload.limit_price:g}" if payload.limit_price else ""
            reduce = " reduce-only" if payload.reduce_only else ""
            return (
                f"{payload.client_order_id} {payload.side} {payload.quantity:g} "
                f"{payload.symbol} {payload.order_type}{price}{reduce}"
            )
        case OrderUpdate():
            reason = f" ({payload.reason})" if payload.reason else ""
            return (
                f"{payload.client_order_id} {payload.status} filled "
                f"{payload.filled_quantity:g}{reason}"
            )
        case Fill():
            return (
                f"{payload.client_order_id} {payload.side} {payload.quantity:g} "
                f"{payload.symbol} @ {payload.price:g} fee {payload.fee:g} {payload.fee_currency}"
            )
        case PortfolioSnapshot():
            flags = (" HALTED" if payload.halted else "") + (
                " DRAWDOWN-STOP" if payload.drawdown_stopped else ""
            )
            return (
                f"equity {payload.equity:,.2f} drawdown {_percent(payload.drawdown)} "
                f"VaR {_percent(payload.expected_var)} positions {len(payload.positions)}{flags}"
            )
        case PortfolioMarks():
            return f"{len(payload.asof)} marks"
        case RiskAlert():
            return f"{payload.severity} {payload.kind}: {payload.message}"
        case Control():
            reason = f" ({payload.reason})" if payload.reason else ""
            return f"{payload.command} -> {payload.target} by {payload.origin}{reason}"
        case Heartbeat():
            lag = "?" if payload.lag is None else payload.lag
            return (
                f"{payload.instance} pid {payload.pid} {payload.status} "
                f"done {payload.processed} lag {lag} pending {payload.pending}"
            )
    return ""


def format_line(topic: str, event: Envelope) -> str:
    """One event as ``tail`` prints it."""
    when = event.ts.strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}  {topic:<13} {event.type:<17} {_summary_of(event.payload)}".rstrip()


def follow(
    bus: RedisBus,
    topics: Sequence[str],
    stop: threading.Event,
    *,
    last: int = 0,
    block_ms: int = 1000,
) -> Iterator[tuple[str, str, Envelope | None, bytes]]:
    """Yield ``(topic, stream id, event or None, raw bytes)`` of every entry added to
    ``topics`` from now on (first the ``last`` newest of each, oldest first), until ``stop``
    is set. None marks an entry that does not decode."""
    stream_keys = {keys.stream(bus.namespace, topic): topic for topic in topics}
    cursors: dict[str, str] = {}
    backlog: list[tuple[str, str, bytes]] = []
    for key, topic in stream_keys.items():
        newest = bus.call("xrevrange", lambda k=key: bus.redis.xrevrange(k, count=max(last, 1)))
        cursors[key] = newest[0][0].decode() if newest else "0-0"
        if last:
            backlog += [(m.decode(), topic, f.get(b"event", b"")) for m, f in newest]
    for message_id, topic, data in sorted(backlog, key=lambda e: stream_id_order(e[0])):
        yield topic, message_id, _decoded(data), data
    while not stop.is_set():
        response = bus.call(
            "xread", lambda: bus.redis.xread(cursors, count=500, block=block_ms) or []
        )
        batch = []
        for key, entries in response:
            key = key.decode() if isinstance(key, bytes) else key
            for message_id, fields in entries:
                cursors[key] = message_id.decode()
                batch.append((message_id.decode(), stream_keys[key], fields.get(b"event", b"")))
        for message_id, topic, data in sorted(batch, key=lambda e: stream_id_order(e[0])):
            yield topic, message_id, _decoded(data), data


def _decoded(data: bytes) -> Envelope | None:
    try:
        return decode(data)
    except EventDecodeError:
        return None


def run_tail(
    bus: RedisBus,
    topics: Sequence[str],
    stop: threading.Event,
    write: Callable[[str], None],
    *,
    last: int = 0,
    as_json: bool = False,
) -> int:
    """Print every event of ``topics`` until ``stop`` is set; return how many were printed."""
    printed = 0
    for topic, message_id, event, data in follow(bus, topics, stop, last=last):
        if event is None:
            write(f"{message_id}  {topic:<13} undecodable entry ({len(data)} bytes)")
        elif as_json:
            write(msgspec.json.encode({"topic": topic, **msgspec.to_builtins(event)}).decode())
        else:
            write(format_line(topic, event))
        printed += 1
    return printed

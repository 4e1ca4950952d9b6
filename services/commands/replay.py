"""``deepfactor replay RUN_DIR``: run a recorded paper run's market events through the services
again, in one process, and compare what comes out with what the run recorded.

The run directory holds the event log (``events.jsonl``, written by the archive service) and
the config the run started with (``config.json``, secrets masked). The bar sets, bar blocks,
schedule ticks and controls of the log are fed in log order, one at a time, to the services
built as a backtest builds them (in-memory bus, ``Pump``, a simulated clock moved to each bar
and tick), each handled to the end before the next goes in. The replay's orders, fills and
final portfolio snapshot are then compared with the log's, by business id: orders by
``client_order_id`` (symbol, side, quantity), fills by ``fill_id`` (symbol, side, quantity,
price, fee), and the last snapshot (time, equity, cash). Numbers agree within 1e-9 relative.

The log's controls include a resumed account's ``resume`` and any halt a stopped run sent, so
a run that was killed and resumed replays as one. A config changed between starts of one
account cannot be replayed: ``config.json`` holds the last start's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import Config
from engine.errors import ConfigError, UsageError
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    Fill,
    OrderRequest,
    PortfolioSnapshot,
    RebalanceDue,
)
from services.daemons.archive import EVENT_LOG, read_event_log
from services.runtime.assembly import build_services, validate
from services.runtime.loop import Pump
from services.runtime.run_dir import CONFIG_FILE

log = structlog.get_logger("services.commands.replay")
RELATIVE_TOLERANCE = 1e-9
FEED_TYPES = (BarSet, BarBlock, RebalanceDue, Control)
_ORDER_FIELDS = ("symbol", "side", "quantity")
_FILL_FIELDS = ("symbol", "side", "quantity", "price", "fee")


@dataclass(frozen=True)
class RecordedRun:
    """What a run directory recorded: its config and its events, in log order."""

    run_dir: Path
    config: Config
    events: list[Envelope]


@dataclass(frozen=True)
class Difference:
    """One way the replay differs from the log: ``kind`` is order, fill or snapshot, ``id`` its
    business id; ``problem`` is missing (recorded, not replayed), extra (replayed, not
    recorded) or different (then ``field`` with both values)."""

    kind: str
    id: str
    problem: str
    field: str | None = None
    recorded: Any = None
    replayed: Any = None

    def text(self) -> str:
        if self.problem == "missing":
            return f"{self.kind} {self.id}: missing (recorded, not replayed)"
        if self.problem == "extra":
            return f"{self.kind} {self.id}: extra (replayed, not recorded)"
        return (
            f"{self.kind} {self.id}: {self.field} differs: recorded {self.recorded!r}, "
            f"replayed {self.replayed!r}"
        )


@dataclass
class ReplayReport:
    """What was fed, what was compared, and every difference found."""

    run_dir: str
    events: int = 0
    fed: dict[str, int] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)
    fills: dict[str, int] = field(default_factory=dict)
    final_snapshot: dict[str, Any] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready builtins (``--json``)."""
        return {
            "run_dir": self.run_dir,
            "identical": self.identical,
            "events": self.events,
            "fed": self.fed,
            "orders": self.orders,
            "fills": self.fills,
            "final_snapshot": self.final_snapshot,
            "differences": [asdict(d) for d in self.differences],
        }

    def text(self) -> str:
        """The report in a few lines, for a terminal."""
        fed = self.fed
        snapshot = self.final_snapshot
        lines = [
            f"replay {self.run_dir}",
            f"  {'events':<15} {self.events} in the log; fed {fed.get('bars', 0)} bar events, "
            f"{fed.get('ticks', 0)} ticks, {fed.get('controls', 0)} controls",
            f"  {'orders':<15} {self.orders.get('compared', 0)} compared "
            f"({self.orders.get('recorded', 0)} recorded, {self.orders.get('replayed', 0)} "
            "replayed)",
            f"  {'fills':<15} {self.fills.get('compared', 0)} compared "
            f"({self.fills.get('recorded', 0)} recorded, {self.fills.get('replayed', 0)} "
            "replayed)",
        ]
        if snapshot.get("recorded") is not None:
            recorded = snapshot["recorded"]
            lines.append(
                f"  {'final snapshot':<15} {recorded['asof']}: equity {recorded['equity']:,.2f}, "
                f"cash {recorded['cash']:,.2f}"
            )
        else:
            lines.append(f"  {'final snapshot':<15} none recorded")
        if self.identical:
            lines.append("identical")
        else:
            lines.append(f"{len(self.differences)} difference(s):")
            lines.extend(f"  {d.text()}" for d in self.differences)
        return "\n".join(lines)


def load_recorded_run(run_dir: str | Path) -> RecordedRun:
    """Read ``RUN_DIR/config.json`` and ``RUN_DIR/events.jsonl``.

    Raises
    ------
    UsageError
        A file is missing or unreadable (named in the message).
    ConfigError
        ``config.json`` is not a valid config.
    EventLogError
        A line of the log (other than a torn last one) is not a valid event.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"RUN_DIR {run_dir}: not a directory")
    config_path, log_path = run_dir / CONFIG_FILE, run_dir / EVENT_LOG
    for path in (config_path, log_path):
        if not path.is_file():
            raise UsageError(
                f"RUN_DIR {run_dir}: no {path.name} (not the directory of a paper run "
                "that keeps its event log)"
            )
    config = load_run_config(config_path)
    try:
        events = read_event_log(log_path)
    except OSError as error:
        raise UsageError(f"{log_path}: cannot read ({error.strerror or error})") from None
    return RecordedRun(run_dir=run_dir, config=config, events=events)


def load_run_config(path: Path) -> Config:
    """The config a run wrote to ``config.json``, its masked ``redis_url`` blanked (the replay
    runs on the in-memory bus).

    Raises
    ------
    UsageError
        The file cannot be read.
    ConfigError
        It is not a valid config; the message names the file.
    """
    try:
        tree = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not JSON ({error})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a JSON object, received {type(tree).__name__}")
    bus = tree.get("bus")
    if isinstance(bus, dict) and "redis_url" in bus:
        tree["bus"] = {**bus, "redis_url": ""}
    try:
        config = msgspec.convert(tree, Config, strict=True)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        validate(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


def _start_time(events: Sequence[Envelope]) -> datetime:
    # Where the paper run's clock started: the first bar's open.
    for event in events:
        payload = event.payload
        if isinstance(payload, BarSet):
            return payload.bar_open
        if isinstance(payload, BarBlock):
            return payload.bar_open[0]
    return events[0].ts if events else datetime.now(UTC)


def _unique(payloads: Iterable[Any], key: str) -> dict[str, Any]:
    # First appearance of each business id, in order.
    out: dict[str, Any] = {}
    for payload in payloads:
        out.setdefault(getattr(payload, key), payload)
    return out


def _close(recorded: float, replayed: float) -> bool:
    return math.isclose(recorded, replayed, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)


def _compare(
    kind: str,
    recorded: dict[str, Any],
    replayed: dict[str, Any],
    fields: Sequence[str],
) -> list[Difference]:
    differences = []
    for identifier, was in recorded.items():
        now = replayed.get(identifier)
        if now is None:
            differences.append(Difference(kind, identifier, "missing"))
            continue
        for name in fields:
            a, b = getattr(was, name), getattr(now, name)
            same = _close(a, b) if isinstance(a, float) else a == b
            if not same:
                differences.append(Difference(kind, identifier, "different", name, a, b))
    differences.extend(
        Difference(kind, identifier, "extra")
        for identifier in replayed
        if identifier not in recorded
    )
    return differences


def _snapshot_figures(snapshot: PortfolioSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {"asof": snapshot.asof.isoformat(), "equity": snapshot.equity, "cash": snapshot.cash}


def _final_only(snapshot: PortfolioSnapshot, problem: str) -> Difference:
    return Difference("snapshot", f"final {snapshot.asof.isoformat()}", problem)


def _compare_snapshots(
    recorded: PortfolioSnapshot | None, replayed: PortfolioSnapshot | None
) -> list[Difference]:
    if recorded is None:
        return [] if replayed is None else [_final_only(replayed, "extra")]
    if replayed is None:
        return [_final_only(recorded, "missing")]
    identifier = f"final {recorded.asof.isoformat()}"
    differences = []
    if recorded.asof != replayed.asof:
        differences.append(
            Difference(
                "snapshot",
                identifier,
                "different",
                "asof",
                recorded.asof.isoformat(),
                replayed.asof.isoformat(),
            )
        )
    for name in ("equity", "cash"):
        a, b = getattr(recorded, name), getattr(replayed, name)
        if abs(a - b) > RELATIVE_TOLERANCE * max(1.0, abs(a), abs(b)):
            differences.append(Difference("snapshot", identifier, "different", name, a, b))
    return differences


def _outputs(
    events: Iterable[Envelope],
) -> tuple[list[OrderRequest], list[Fill], list[PortfolioSnapshot]]:
    orders: list[OrderRequest] = []
    fills: list[Fill] = []
    snapshots: list[PortfolioSnapshot] = []
    for event in events:
        payload = event.payload
        if isinstance(payload, OrderRequest):
            orders.append(payload)
        elif isinstance(payload, Fill):
            fills.append(payload)
        elif isinstance(payload, PortfolioSnapshot):
            snapshots.append(payload)
    return orders, fills, snapshots


def _published(bus: MemoryBus, topics: Sequence[str]) -> list[Envelope]:
    # Everything the services published on ``topics``, through a group of its own.
    consumer = bus.consumer("replay-report", "replay-report-0", topics)
    out: list[Envelope] = []
    while deliveries := consumer.read(10_000):
        out.extend(d.event for d in deliveries if d.event is not None)
        consumer.ack(deliveries)
    return out


def replay(recorded: RecordedRun) -> ReplayReport:
    """Feed the recorded run's market events through fresh services and compare.

    Raises
    ------
    HandlerFailedError
        A service failed on a recorded event (the recorded run did not).
    """
    events = recorded.events
    feed = [e for e in events if isinstance(e.payload, FEED_TYPES)]
    bus = MemoryBus(namespace="replay")
    clock = SimulatedClock(_start_time(feed))
    services = build_services(recorded.config, bus, clock)
    pump = Pump(services.all())
    fed = {"bars": 0, "ticks": 0, "controls": 0}
    for event in feed:
        payload = event.payload
        if isinstance(payload, Control):
            # Stamped with the wall clock when a resumed run sent it: the clock stays put.
            fed["controls"] += 1
        else:
            if event.ts > clock.now():
                clock.advance_to(event.ts)
            fed["ticks" if isinstance(payload, RebalanceDue) else "bars"] += 1
        bus.publish(event.topic, event)
        pump.pump()

    recorded_orders, recorded_fills, recorded_snapshots = _outputs(events)
    replayed_orders, replayed_fills, replayed_snapshots = _outputs(
        _published(bus, (OrderRequest.TOPIC, Fill.TOPIC, PortfolioSnapshot.TOPIC))
    )
    was_orders = _unique(recorded_orders, "client_order_id")
    now_orders = _unique(replayed_orders, "client_order_id")
    was_fills = _unique(recorded_fills, "fill_id")
    now_fills = _unique(replayed_fills, "fill_id")
    was_final = recorded_snapshots[-1] if recorded_snapshots else None
    now_final = replayed_snapshots[-1] if replayed_snapshots else None

    report = ReplayReport(
        run_dir=str(recorded.run_dir),
        events=len(events),
        fed=fed,
        orders={
            "compared": len(was_orders.keys() | now_orders.keys()),
            "recorded": len(was_orders),
            "replayed": len(now_orders),
        },
        fills={
            "compared": len(was_fills.keys() | now_fills.keys()),
            "recorded": len(was_fills),
            "replayed": len(now_fills),
        },
        final_snapshot={
            "recorded": _snapshot_figures(was_final),
            "replayed": _snapshot_figures(now_final),
        },
    )
    report.differences.extend(_compare("order", was_orders, now_orders, _ORDER_FIELDS))
    report.differences.extend(_compare("fill", was_fills, now_fills, _FILL_FIELDS))
    report.differences.extend(_compare_snapshots(was_final, now_final))
    log.info(
        "replay.done",
        run_dir=str(recorded.run_dir),
        events=len(events),
        orders=len(now_orders),
        fills=len(now_fills),
        differences=len(report.differences),
    )
    return report

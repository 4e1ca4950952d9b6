"""``deepfactor status``: what a running (or stopped) paper account looks like, from Redis only.

Every figure comes from the account's streams and keys, never from a process's memory, so the
view is the same whichever process asks and whether the daemons run under ``deepfactor up``,
systemd, containers or ``deepfactor paper``:

- services: the newest Heartbeat of each instance (``services.runtime.loop``), one row per
  instance, so the members of a service that scales out (several signal processes) each have
  their own; an instance whose heartbeats stopped for three of its intervals is ``stale``
  (killed, hung, or cut off from Redis), one that said ``stopping`` is ``stopped``, a hot
  standby waiting for its service's lock is ``standby`` (and no longer shown once its beats
  stop: it took over or went);
- consumer groups: per group, messages delivered but not acknowledged (pending) and not yet
  delivered (lag), summed over its topics: a dead service shows here as a growing lag even
  when it left no heartbeat;
- the portfolio: the newest PortfolioSnapshot, the day's P&L against the newest snapshot a day
  older, drawdown against the stop and VaR against the limit of the account's config;
- the active model (the newest Signal's model and whether it fell back) and the last
  rebalance (the newest TargetPortfolio).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from engine.bus import keys
from engine.bus.redis_streams import RedisBus
from engine.config import Config
from engine.events import Heartbeat, PortfolioSnapshot, Signal, TargetPortfolio
from engine.events.base import Envelope
from engine.events.codec import PAYLOAD_TYPES, decode
from services.commands.operator import portfolio_status

STALE_AFTER_BEATS = 3
DEFAULT_INTERVAL_S = 5.0
HEARTBEAT_SCAN = 2_000
DAY_SCAN = 5_000


def _newest(bus: RedisBus, topic: str, payload_type: type, scan: int = 64) -> Envelope | None:
    """The newest event of ``payload_type`` among the last ``scan`` entries of ``topic``."""
    key = keys.stream(bus.namespace, topic)
    entries = bus.call("xrevrange", lambda: bus.redis.xrevrange(key, count=scan))
    for _, fields in entries:
        event = decode(fields[b"event"])
        if isinstance(event.payload, payload_type):
            return event
    return None


def services_status(bus: RedisBus, now: datetime) -> list[dict[str, Any]]:
    """The newest heartbeat of each service instance, with its state (module docstring)."""
    key = keys.stream(bus.namespace, Heartbeat.TOPIC)
    entries = bus.call("xrevrange", lambda: bus.redis.xrevrange(key, count=HEARTBEAT_SCAN))
    newest: dict[str, tuple[Envelope, Heartbeat]] = {}
    for _, fields in entries:
        event = decode(fields[b"event"])
        beat = event.payload
        if isinstance(beat, Heartbeat) and beat.instance not in newest:
            newest[beat.instance] = (event, beat)
    rows = []
    for instance, (event, beat) in sorted(
        newest.items(), key=lambda item: (item[1][1].service, item[0])
    ):
        age_s = max(0.0, (now - event.ts).total_seconds())
        interval = beat.interval_s or DEFAULT_INTERVAL_S
        if beat.status == "standby":
            if age_s > STALE_AFTER_BEATS * interval:
                continue  # it took over (its active row shows it) or it was stopped
            state = "standby"
        elif beat.status == "stopping":
            state = "stopped"
        elif age_s > STALE_AFTER_BEATS * interval:
            state = "stale"
        else:
            state = "alive"
        rows.append(
            {
                "service": beat.service,
                "instance": instance,
                "state": state,
                "pid": beat.pid,
                "uptime_s": round(beat.uptime_s + (age_s if state == "alive" else 0.0), 1),
                "heartbeat_age_s": round(age_s, 1),
                "processed": beat.processed,
                "failed": beat.failed,
                "lag": beat.lag,
                "pending": beat.pending,
                "last_event": beat.last_event_type or None,
                "last_event_ts": beat.last_event_ts.isoformat() if beat.last_event_ts else None,
                "version": beat.version or None,
            }
        )
    return rows


def groups_status(bus: RedisBus) -> dict[str, dict[str, int | None]]:
    """Per consumer group: pending and lag summed over the topics it reads (lag None where
    Redis cannot tell: before 7, or after a trim)."""
    topics = sorted({payload.TOPIC for payload in PAYLOAD_TYPES})

    def read() -> dict[str, dict[str, int | None]]:
        groups: dict[str, dict[str, int | None]] = {}
        for topic in topics:
            try:
                infos = bus.redis.xinfo_groups(keys.stream(bus.namespace, topic))
            except redis.ResponseError:  # no such stream yet
                continue
            for info in infos:
                name = info["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                row = groups.setdefault(name, {"pending": 0, "lag": 0})
                row["pending"] = (row["pending"] or 0) + int(info["pending"])
                lag = info.get("lag")
                row["lag"] = None if lag is None or row["lag"] is None else row["lag"] + int(lag)
        return groups

    return bus.call("xinfo_groups", read)


def day_pnl(bus: RedisBus, latest: PortfolioSnapshot) -> dict[str, Any] | None:
    """Equity change since the newest snapshot at least a day (event time) older than
    ``latest``; None when the stream holds none that old (a young account)."""
    key = keys.stream(bus.namespace, PortfolioSnapshot.TOPIC)
    cutoff = latest.asof - timedelta(days=1)
    entries = bus.call("xrevrange", lambda: bus.redis.xrevrange(key, count=DAY_SCAN))
    for _, fields in entries:
        payload = decode(fields[b"event"]).payload
        if isinstance(payload, PortfolioSnapshot) and payload.asof <= cutoff:
            change = latest.equity - payload.equity
            return {
                "since": payload.asof.isoformat(),
                "pnl": change,
                "return": change / payload.equity if payload.equity else None,
            }
    return None


def account_status(bus: RedisBus, config: Config, now: datetime | None = None) -> dict[str, Any]:
    """Everything ``deepfactor status`` shows (module docstring), as JSON-ready data."""
    now = now or datetime.now(UTC)
    status = portfolio_status(bus)
    status["now"] = now.isoformat()
    status["services"] = services_status(bus, now)
    status["groups"] = groups_status(bus)
    risk = config.risk
    status["limits"] = {
        "enabled": risk.enabled,
        "drawdown_stop": risk.drawdown_stop or None,
        "var_limit": risk.var_limit or None,
        "var_confidence": risk.var_confidence,
    }
    snapshot = _newest(bus, PortfolioSnapshot.TOPIC, PortfolioSnapshot)
    if snapshot is not None and "portfolio" in status:
        assert isinstance(snapshot.payload, PortfolioSnapshot)
        status["portfolio"]["day"] = day_pnl(bus, snapshot.payload)
    signal = _newest(bus, Signal.TOPIC, Signal)
    if signal is not None:
        assert isinstance(signal.payload, Signal)
        status["model"] = {
            "version": signal.payload.model,
            "fallback": signal.payload.fallback,
            "selected": list(signal.payload.selected),
            "asof": signal.payload.asof.isoformat(),
        }
    target = _newest(bus, TargetPortfolio.TOPIC, TargetPortfolio)
    if target is not None:
        assert isinstance(target.payload, TargetPortfolio)
        weights = target.payload.weights
        status["last_rebalance"] = {
            "rebalance_id": target.payload.rebalance_id,
            "asof": target.payload.asof.isoformat(),
            "gross": sum(abs(w) for w in weights),
            "positions": sum(1 for w in weights if w != 0),
            "risk_actions": list(target.payload.risk_actions),
        }
    return status


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _instance_label(service: str, instance: str) -> str:
    # "signal-box-2" shows as "box-2": the service has its own column.
    return instance.removeprefix(f"{service}-") or instance


def render_status(status: dict[str, Any], where: str) -> str:
    """The status as the terminal shows it: the services table, then the account."""
    lines = [f"account   {where} (namespace {status['namespace']})"]
    services = status["services"]
    if services:
        header = (
            "service",
            "instance",
            "state",
            "pid",
            "uptime",
            "beat",
            "lag",
            "pending",
            "done",
            "last",
        )
        rows = [header]
        for row in services:
            rows.append(
                (
                    row["service"],
                    _instance_label(row["service"], row["instance"]),
                    row["state"],
                    str(row["pid"]),
                    f"{row['uptime_s']:.0f}s",
                    f"{row['heartbeat_age_s']:.0f}s ago",
                    _count(row["lag"]),
                    str(row["pending"]),
                    str(row["processed"]),
                    row["last_event"] or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines.append("")
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    else:
        lines += ["", "  no heartbeats: no service of this account has run yet"]
    behind = {
        name: row
        for name, row in status["groups"].items()
        if row["pending"] or row["lag"] is None or row["lag"]
    }
    if behind:
        text = ", ".join(
            f"{name} (pending {row['pending']}, lag {_count(row['lag'])})"
            for name, row in sorted(behind.items())
        )
        lines.append(f"  groups behind: {text}")
    lines.append("")
    switch = status["kill_switch"]
    halted = "no" if switch is None else f"yes, since {switch['since']} ({switch['reason']})"
    limits = status["limits"]
    portfolio = status.get("portfolio")
    rows2: list[tuple[str, str]] = []
    if portfolio is not None:
        day = portfolio.get("day")
        day_text = (
            "n/a (less than a day of history)"
            if day is None
            else f"{day['pnl']:+,.2f} ({_percent(day['return'])}) since {day['since']}"
        )
        stop = limits["drawdown_stop"]
        stopped = ", stop ON" if portfolio["drawdown_stopped"] else ""
        rows2 += [
            ("as of", portfolio["asof"]),
            ("equity", f"{portfolio['equity']:,.2f}"),
            ("day P&L", day_text),
            ("positions", f"{portfolio['positions']}, gross {portfolio['gross_exposure']:.2f}"),
            ("drawdown", f"{_percent(portfolio['drawdown'])} (stop {_percent(stop)}{stopped})"),
            (
                "VaR",
                f"{_percent(portfolio['realised_var'])} realised, "
                f"{_percent(portfolio['expected_var'])} expected "
                f"(limit {_percent(limits['var_limit'])} at {limits['var_confidence']:.0%})",
            ),
        ]
    else:
        rows2.append(("portfolio", "no snapshot yet"))
    rows2.append(("halted", halted))
    model = status.get("model")
    if model is not None:
        fallback = " (FALLBACK: baseline served)" if model["fallback"] else ""
        rows2.append(("model", f"{model['version']}{fallback}"))
    last = status.get("last_rebalance")
    if last is not None:
        actions = f", limits: {', '.join(last['risk_actions'])}" if last["risk_actions"] else ""
        rows2.append(
            (
                "rebalance",
                f"{last['rebalance_id']} at {last['asof']}: {last['positions']} positions, "
                f"gross {last['gross']:.2f}{actions}",
            )
        )
    lines += [f"  {name:<10} {value}" for name, value in rows2]
    return "\n".join(lines)

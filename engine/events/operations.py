"""Operational payloads: risk alerts, control commands and liveness."""

from __future__ import annotations

from typing import ClassVar, Literal

from engine.events.base import EventPayload, NonNegativeFloat, NonNegativeInt, UtcDatetime

RiskAlertKind = Literal[
    "var_limit",
    "es_limit",
    "vol_target",
    "drawdown_stop",
    "var_stop",
    "drawdown_hold",
    "drawdown_reentry",
    "kill_switch",
    "optimiser_fallback",
    "pre_trade",
    "model_fallback",
    "broker_reject",
    "data_quality",
    "dead_letter",
]


class RiskAlert(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A risk limit or safeguard acted; ``metrics`` carries the numbers it acted on.

    A limit that acts is an event, not an exception: trading goes on inside the limit.
    """

    TYPE: ClassVar[str] = "RiskAlert"
    TOPIC: ClassVar[str] = "risk"

    kind: RiskAlertKind
    severity: Literal["info", "warning", "critical"]
    message: str
    action: str = ""
    metrics: dict[str, float] = {}
    # The bar the limit acted on (None: not tied to a bar, e.g. an operator's halt), and the
    # rebalance it shaped, if any.
    asof: UtcDatetime | None = None
    rebalance_id: str = ""


class Control(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator command to one service (``target``) or to all (``"*"``).

    ``origin`` tells a run's own halts and resumes (the end of a replay, a continued account)
    from the kill switch (``deepfactor halt`` / ``resume``): only an operator's resume lifts an
    operator's halt, and that halt is kept in the rebalancer's state across restarts.
    ``flatten`` (operator halts) closes every position with reduce-only orders.
    """

    TYPE: ClassVar[str] = "Control"
    TOPIC: ClassVar[str] = "control"

    command: Literal["halt", "resume", "reload"]
    target: str = "*"
    flatten: bool = False
    reason: str = ""
    origin: Literal["run", "operator"] = "run"


class Heartbeat(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Proof of life of one service instance, with its work counters."""

    TYPE: ClassVar[str] = "Heartbeat"
    TOPIC: ClassVar[str] = "heartbeat"

    service: str
    instance: str
    pid: NonNegativeInt
    status: Literal["starting", "running", "stopping", "standby"]
    processed: NonNegativeInt = 0
    failed: NonNegativeInt = 0
    uptime_s: NonNegativeFloat = 0.0
    version: str = ""
    # The next heartbeat is due within this many seconds: ``deepfactor status`` calls an
    # instance stale when three are missing.
    interval_s: NonNegativeFloat = 0.0
    # The last event the service applied (empty before the first).
    last_event_id: str = ""
    last_event_type: str = ""
    last_event_ts: UtcDatetime | None = None
    # Messages of its group not yet delivered (None: the bus cannot tell) and delivered but
    # not acknowledged.
    lag: NonNegativeInt | None = None
    pending: NonNegativeInt = 0

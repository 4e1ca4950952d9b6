"""Operational payloads: risk alerts, control commands and liveness."""

from __future__ import annotations

from typing import ClassVar, Literal

from engine.events.base import EventPayload, NonNegativeFloat, NonNegativeInt

RiskAlertKind = Literal[
    "var_limit",
    "drawdown_stop",
    "drawdown_reentry",
    "kill_switch",
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


class Control(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator command to one service (``target``) or to all (``"*"``)."""

    TYPE: ClassVar[str] = "Control"
    TOPIC: ClassVar[str] = "control"

    command: Literal["halt", "resume", "reload"]
    target: str = "*"
    flatten: bool = False
    reason: str = ""


class Heartbeat(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Proof of life of one service instance, with its work counters."""

    TYPE: ClassVar[str] = "Heartbeat"
    TOPIC: ClassVar[str] = "heartbeat"

    service: str
    instance: str
    pid: NonNegativeInt
    status: Literal["starting", "running", "stopping"]
    processed: NonNegativeInt = 0
    failed: NonNegativeInt = 0
    uptime_s: NonNegativeFloat = 0.0

"""Typed, versioned, immutable events and their JSON codec."""

from engine.events.base import Envelope, EventPayload, make_event
from engine.events.codec import PAYLOAD_BY_TYPE, PAYLOAD_TYPES, decode, encode
from engine.events.decision import RebalanceDue, Signal, TargetPortfolio
from engine.events.ids import event_id_time_ms, new_event_id
from engine.events.market import BarBlock, BarSet, FactorSnapshot
from engine.events.operations import Control, Heartbeat, RiskAlert
from engine.events.trading import (
    TERMINAL_ORDER_STATUSES,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
)

__all__ = [
    "PAYLOAD_BY_TYPE",
    "PAYLOAD_TYPES",
    "TERMINAL_ORDER_STATUSES",
    "BarBlock",
    "BarSet",
    "Control",
    "Envelope",
    "EventPayload",
    "FactorSnapshot",
    "Fill",
    "Heartbeat",
    "OrderRequest",
    "OrderUpdate",
    "PortfolioMarks",
    "PortfolioSnapshot",
    "RebalanceDue",
    "RiskAlert",
    "Signal",
    "TargetPortfolio",
    "decode",
    "encode",
    "event_id_time_ms",
    "make_event",
    "new_event_id",
]

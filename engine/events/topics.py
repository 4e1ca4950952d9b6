"""Topic names of the bus: one stream per topic, each payload type has a default one."""

from __future__ import annotations

from engine.events.codec import PAYLOAD_TYPES

BARS = "bars"
FACTORS = "factors"
SIGNALS = "signals"
SCHEDULE = "schedule"
TARGETS = "targets"
ORDERS = "orders"
ORDER_UPDATES = "order_updates"
FILLS = "fills"
PORTFOLIO = "portfolio"
RISK = "risk"
CONTROL = "control"
HEARTBEAT = "heartbeat"

ALL_TOPICS: tuple[str, ...] = tuple(cls.TOPIC for cls in PAYLOAD_TYPES)
# The ledger the account is rebuilt from: never trimmed (DESIGN.md, state and durability).
LEDGER_TOPICS: frozenset[str] = frozenset({ORDERS, ORDER_UPDATES, FILLS})

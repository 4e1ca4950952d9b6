"""Topic facts that are not per payload type (each payload type names its own ``TOPIC``)."""

from __future__ import annotations

from engine.events.trading import Fill, OrderRequest, OrderUpdate

# The ledger the account is rebuilt from: never trimmed (DESIGN.md, state and durability).
LEDGER_TOPICS: frozenset[str] = frozenset({OrderRequest.TOPIC, OrderUpdate.TOPIC, Fill.TOPIC})

"""Decision payloads: model signals, schedule ticks and the target portfolio."""

from __future__ import annotations

import math
from typing import ClassVar

from engine.events.base import EventPayload, Identifier, NonNegativeFloat, Symbol, UtcDatetime


class Signal(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-asset scores for the next period and the factor weights that produced them.

    ``asof`` is the close time of the bar the scores were computed on; a missing score (NaN
    in process, None after decoding) marks an asset that cannot be scored. ``model`` names the
    model's version; ``fallback`` is True when the model was unusable and a baseline weighting
    was served. ``selected`` lists the factors the model used (non-zero weight) and
    ``latency_ms`` how long its inference took.
    """

    TYPE: ClassVar[str] = "Signal"
    TOPIC: ClassVar[str] = "signals"

    asof: UtcDatetime
    model: str
    factor_weights: dict[str, float]
    symbols: tuple[Symbol, ...]
    scores: tuple[float | None, ...]
    fallback: bool = False
    selected: tuple[str, ...] = ()
    latency_ms: NonNegativeFloat = 0.0

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.symbols):
            raise ValueError(
                f"Signal.scores has {len(self.scores)} values for {len(self.symbols)} symbols"
            )


class RebalanceDue(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A schedule fired: the rebalance identified by ``rebalance_id`` should happen now.

    ``decision_time`` is the close time of the last bar the decision may use (the last bar
    closing at or before ``due``), so a rebalancer that receives the tick late, or ahead of
    that bar's signal, still decides on exactly that bar: never a later one.
    """

    TYPE: ClassVar[str] = "RebalanceDue"
    TOPIC: ClassVar[str] = "schedule"

    rebalance_id: Identifier
    schedule: str
    due: UtcDatetime
    decision_time: UtcDatetime


class TargetPortfolio(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Target weights after optimisation and risk limits; ``risk_actions`` lists what acted."""

    TYPE: ClassVar[str] = "TargetPortfolio"
    TOPIC: ClassVar[str] = "targets"

    rebalance_id: Identifier
    asof: UtcDatetime
    symbols: tuple[Symbol, ...]
    weights: tuple[float, ...]
    cash_weight: NonNegativeFloat
    risk_actions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.symbols):
            raise ValueError(
                f"TargetPortfolio.weights has {len(self.weights)} values for "
                f"{len(self.symbols)} symbols"
            )
        for symbol, weight in zip(self.symbols, self.weights):
            if not math.isfinite(weight):
                raise ValueError(f"TargetPortfolio.weights[{symbol}] is not finite: {weight}")

"""Signal service: scores every asset from its factor exposures.

The thin version weights factors by their configured weights (equal by default); the LSTM
model replaces the weighting, not the service.
"""

from __future__ import annotations

import numpy as np

from engine.bus import Bus
from engine.clock import Clock
from engine.config import FactorConfig
from engine.events import Envelope, EventPayload, FactorSnapshot, Signal
from services.factor_update import factor_label
from services.runtime import Handler, Service
from strategies.weighting import equal_factor_scores


class SignalService(Service):
    """Publishes a Signal per FactorSnapshot."""

    name = "signal"

    def __init__(self, bus: Bus, clock: Clock, factors: tuple[FactorConfig, ...],
                 model: str = "equal-weight") -> None:
        weights = np.array([f.weight for f in factors], dtype=float)
        total = np.abs(weights).sum()
        self.weights = weights / total if total > 0 else weights
        self.labels = tuple(factor_label(f) for f in factors)
        self.model = model
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {FactorSnapshot: self.on_factors}

    def on_factors(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, FactorSnapshot)
        order = [snapshot.factor_names.index(label) for label in self.labels]
        exposures = np.array([snapshot.exposures[j] for j in order], dtype=float)
        scores = equal_factor_scores(exposures, self.weights)
        signal = Signal(
            asof=snapshot.asof,
            model=self.model,
            factor_weights=dict(zip(self.labels, self.weights.tolist())),
            symbols=snapshot.symbols,
            scores=tuple(scores.tolist()),
        )
        self.emit([signal], corr=event.corr, ts=event.ts)

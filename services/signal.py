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

    def __init__(
        self, bus: Bus, clock: Clock, factors: tuple[FactorConfig, ...], model: str = "equal-weight"
    ) -> None:
        self.configured = {factor_label(f): f.weight for f in factors}
        self.model = model
        self._weights_for: dict[tuple[str, ...], tuple[list[int], np.ndarray]] = {}
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {FactorSnapshot: self.on_factors}

    def _weights(self, names: tuple[str, ...]) -> tuple[list[int], np.ndarray]:
        # Weights of the configured factors present in the snapshot (volume factors are absent
        # on close-only data; file factors weigh 1), normalised to unit gross weight.
        cached = self._weights_for.get(names)
        if cached is None:
            rows = [j for j, n in enumerate(names) if self.configured.get(n, 1.0) != 0.0]
            weights = np.array([self.configured.get(names[j], 1.0) for j in rows], dtype=float)
            total = np.abs(weights).sum()
            cached = (rows, weights / total if total > 0 else weights)
            self._weights_for[names] = cached
        return cached

    def on_factors(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, FactorSnapshot)
        rows, weights = self._weights(snapshot.factor_names)
        exposures = np.array([snapshot.exposures[j] for j in rows], dtype=float)
        scores = equal_factor_scores(exposures, weights)
        signal = Signal(
            asof=snapshot.asof,
            model=self.model,
            factor_weights={snapshot.factor_names[j]: float(w) for j, w in zip(rows, weights)},
            symbols=snapshot.symbols,
            scores=tuple(scores.tolist()),
        )
        self.emit([signal], corr=event.corr, ts=event.ts)

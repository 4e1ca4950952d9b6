"""Signal service: scores every asset from its factor exposures with the configured model.

``equal-weight`` weighs the factors by their configured weights (equal by default);
``trailing-ic`` by their recent realised rank ICs; ``lstm``, ``asset-lstm`` and ``ridge`` serve
the active checkpoint of that name in the model registry (``strategies.models.registry``).
The models read the last ``lookback`` FactorSnapshots: the service keeps them, and on start
rebuilds them from the snapshots its group already consumed, so a restart does not begin cold.

When the model cannot serve (no checkpoint, factors it was not trained on, too little history
yet, an output that is not finite or mis-shaped) the trailing-IC baseline is served instead,
the Signal says ``fallback``, and ``signal.fallback`` is logged with the reason (once per
reason, until the model serves again). A ``Control reload`` re-reads the active checkpoint.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import FactorConfig
from engine.events import Control, Envelope, EventPayload, FactorSnapshot, Signal
from services.daemons.factor_update import factor_label
from services.runtime.loop import Handler, Service
from strategies.models import ModelError, Prediction
from strategies.models.baselines import TrailingICModel
from strategies.models.dataset import utc64
from strategies.models.features import snapshot_features
from strategies.models.registry import ModelRegistry
from strategies.weighting import equal_factor_scores

log = structlog.get_logger("services.daemons.signal")
CHECKPOINT_KINDS = ("lstm", "asset-lstm", "ridge")


class _History:
    """The last snapshots' feature rows and exposures, aligned on demand to a universe."""

    def __init__(self, length: int) -> None:
        self.rows: deque[tuple[np.ndarray, tuple[str, ...], np.ndarray]] = deque(maxlen=length)

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, length: int) -> None:
        """Keep at least ``length`` snapshots from now on (a model that reads more)."""
        if self.rows.maxlen is not None and length > self.rows.maxlen:
            self.rows = deque(self.rows, maxlen=length)

    def add(self, features: np.ndarray, snapshot: FactorSnapshot) -> None:
        exposures = np.array(snapshot.exposures, dtype=np.float64)
        self.rows.append((features, snapshot.symbols, exposures))

    def window(self, length: int, symbols: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Features (length, K) and exposures (length, F, N) of the last ``length`` snapshots
        on ``symbols`` (NaN for an asset a snapshot did not have)."""
        rows = list(self.rows)[-length:]
        features = np.stack([r[0] for r in rows])
        n_factors = rows[-1][2].shape[0]
        exposures = np.full((len(rows), n_factors, len(symbols)), np.nan)
        for t, (_, row_symbols, values) in enumerate(rows):
            if row_symbols == symbols:
                exposures[t] = values
                continue
            position = {s: i for i, s in enumerate(row_symbols)}
            where = [(j, position[s]) for j, s in enumerate(symbols) if s in position]
            if where:
                target, source = (list(x) for x in zip(*where))
                exposures[t][:, target] = values[:, source]
        return features, exposures


class SignalService(Service):
    """Publishes a Signal per FactorSnapshot."""

    name = "signal"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        factors: tuple[FactorConfig, ...],
        model: str = "equal-weight",
        registry: str | Path | None = None,
        lookback: int = 20,
        device: str = "cpu",
        inference_threads: int | None = None,
    ) -> None:
        self.configured = {factor_label(f): f.weight for f in factors}
        self.model = model
        self.registry = ModelRegistry(registry) if registry is not None else None
        self.lookback = lookback
        self.device = device
        self.inference_threads = inference_threads
        self._weights_for: dict[tuple[str, ...], tuple[list[int], np.ndarray]] = {}
        self._served: object | None = None  # the loaded model (checkpoint kinds, trailing-ic)
        self._served_for: tuple[str, ...] | None = None
        self._load_error: str | None = None
        self._fallback_reason: str | None = None
        self.fallbacks = 0
        self.last_model = model  # the version of the model behind the last Signal
        self._history = _History(lookback) if model != "equal-weight" else None
        self._schedule: list[tuple[np.datetime64, object]] = []
        super().__init__(bus, clock)

    def serve_schedule(self, schedule: list[tuple[np.datetime64, object]]) -> None:
        """Serve, at each snapshot, the latest model of ``schedule`` (decision time from which
        it serves, model) that starts at or before the snapshot: a walk-forward backtest."""
        self._schedule = list(schedule)
        self._starts = np.array([start for start, _ in schedule], dtype="datetime64[ns]")

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {FactorSnapshot: self.on_factors}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load torch for a checkpoint strategy and rebuild the snapshot history from what
        this group consumed before a restart."""
        if self._history is None:
            return
        if self.model in CHECKPOINT_KINDS:
            # The registry loads torch on first use; a checkpoint strategy loads it now (about
            # a second), so that its first Signal does not wait for it.
            import torch  # noqa: F401
        # As many as the active checkpoint reads, when it reads more than [model] lookback.
        self._history.keep(self._active_lookback())
        count = self._history.rows.maxlen
        history = self.bus.consumed_history(self.name, FactorSnapshot.TOPIC, count)
        for event in history:
            snapshot = event.payload
            assert isinstance(snapshot, FactorSnapshot)
            self._history.add(snapshot_features(snapshot, snapshot.factor_names), snapshot)
        if history:
            log.info("signal.warmed_up", snapshots=len(history))

    def _active_lookback(self) -> int:
        # The lookback in the active checkpoint's meta.json (0 when there is none to read).
        if self.registry is None or self.model not in CHECKPOINT_KINDS:
            return 0
        try:
            active = self.registry.active(self.model)
            return int(self.registry.meta(self.model, active)["lookback"]) if active else 0
        except (ModelError, KeyError, TypeError, ValueError):
            return 0  # loading it will say what is wrong

    def on_control(self, control: Control, event: Envelope) -> None:
        super().on_control(control, event)
        if control.command != "reload" or self._history is None:
            return
        names = self._served_for
        self._served, self._served_for, self._load_error = None, None, None
        if names is not None:
            self._load(names)
        log.info(
            "signal.reloaded",
            model=getattr(self._served, "version", None),
            error=self._load_error,
            reason=control.reason,
        )

    # -- models ----------------------------------------------------------------------------
    def _load(self, names: tuple[str, ...]) -> None:
        # The model for this factor set: loaded once per factor set (and on reload).
        self._served_for = names
        self._served, self._load_error = None, None
        if self.model == "trailing-ic":
            self._served = TrailingICModel(names, self.lookback)
            return
        if self.registry is None:
            self._load_error = f"strategy {self.model} needs a model registry ([model] registry)"
            return
        if self.inference_threads:
            import torch

            torch.set_num_threads(self.inference_threads)
        try:
            self._served = self.registry.load(self.model, factors=names, device=self.device)
        except ModelError as error:
            self._load_error = str(error)
            log.error("signal.model_unavailable", strategy=self.model, error=str(error))
            return
        if self._history is not None:
            self._history.keep(self._served.lookback)  # type: ignore[attr-defined]
        log.info(
            "signal.model_loaded",
            strategy=self.model,
            version=self._served.version,  # type: ignore[attr-defined]
            lookback=self._served.lookback,  # type: ignore[attr-defined]
        )

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

    def _configured_signal(self, snapshot: FactorSnapshot) -> Signal:
        rows, weights = self._weights(snapshot.factor_names)
        exposures = np.array([snapshot.exposures[j] for j in rows], dtype=float)
        scores = equal_factor_scores(exposures, weights)
        return Signal(
            asof=snapshot.asof,
            model=self.model,
            factor_weights={snapshot.factor_names[j]: float(w) for j, w in zip(rows, weights)},
            symbols=snapshot.symbols,
            scores=tuple(scores.tolist()),
            selected=tuple(snapshot.factor_names[j] for j in rows),
        )

    def _predict(self, snapshot: FactorSnapshot) -> tuple[object, Prediction, str | None]:
        # (model served, its prediction, why the fallback was served or None).
        assert self._history is not None
        names = snapshot.factor_names
        if self._schedule:
            at = utc64(snapshot.asof)
            position = int(np.searchsorted(self._starts, at, side="right")) - 1
            model = self._schedule[position][1] if position >= 0 else None
            reason = None if model is not None else "before the first walk-forward fit"
        else:
            if names != self._served_for:
                self._load(names)
            model = self._served
            reason = self._load_error
        if model is not None and len(self._history) < model.lookback:  # type: ignore[attr-defined]
            reason = f"warming up: the model reads {model.lookback} snapshots"  # type: ignore[attr-defined]
        if reason is None and model is not None:
            features, exposures = self._history.window(model.lookback, snapshot.symbols)  # type: ignore[attr-defined]
            try:
                prediction = model.predict(features, exposures)  # type: ignore[attr-defined]
                reason = _invalid(prediction, len(names), len(snapshot.symbols))
            except (ValueError, RuntimeError) as error:
                reason = f"inference failed: {type(error).__name__}: {error}"
            if reason is None:
                return model, prediction, None
        baseline = TrailingICModel(names, min(self.lookback, len(self._history)), "trailing-ic")
        features, exposures = self._history.window(baseline.lookback, snapshot.symbols)
        return baseline, baseline.predict(features, exposures), reason or "no model"

    def on_factors(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, FactorSnapshot)
        if self._history is None:
            self.emit([self._configured_signal(snapshot)], corr=event.corr, ts=event.ts)
            return
        names = snapshot.factor_names
        self._history.add(snapshot_features(snapshot, names), snapshot)
        started = time.perf_counter()
        model, prediction, reason = self._predict(snapshot)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._note_fallback(reason, snapshot)
        self.last_model = model.version  # type: ignore[attr-defined]
        weights = prediction.factor_weights
        signal = Signal(
            asof=snapshot.asof,
            model=model.version,  # type: ignore[attr-defined]
            factor_weights={}
            if weights is None
            else {n: float(w) for n, w in zip(names, weights) if w != 0.0},
            symbols=snapshot.symbols,
            scores=tuple(prediction.scores.tolist()),
            fallback=reason is not None,
            selected=prediction.selected,
            latency_ms=latency_ms,
        )
        self.emit([signal], corr=event.corr, ts=event.ts)

    def _note_fallback(self, reason: str | None, snapshot: FactorSnapshot) -> None:
        if reason is None:
            if self._fallback_reason is not None:
                log.info("signal.model_serving", strategy=self.model, after=self.fallbacks)
            self._fallback_reason = None
            return
        self.fallbacks += 1
        if reason != self._fallback_reason:
            log.warning(
                "signal.fallback",
                strategy=self.model,
                served="trailing-ic",
                reason=reason,
                asof=snapshot.asof.isoformat(),
            )
        self._fallback_reason = reason


def _invalid(prediction: Prediction, n_factors: int, n_assets: int) -> str | None:
    """Why a model's output cannot be served (None when it can)."""
    scores = prediction.scores
    if scores.shape != (n_assets,):
        return f"scores shaped {scores.shape}, expected ({n_assets},)"
    weights = prediction.factor_weights
    if weights is not None:
        if weights.shape != (n_factors,):
            return f"factor weights shaped {weights.shape}, expected ({n_factors},)"
        if not np.isfinite(weights).all():
            return "factor weights are not finite"
    if np.isinf(scores).any():
        return "scores are infinite"
    if n_assets and np.isnan(scores).all():
        return "no asset could be scored"
    return None

"""Signal service: scores every asset from its factor exposures with the configured model.

``equal-weight`` weighs the factors by their configured weights (equal by default);
``trailing-ic`` by their recent realised rank ICs; ``lstm``, ``asset-lstm`` and ``ridge`` serve
the active checkpoint of that name in the model registry (``strategies.models.registry``).

History. The models read the last ``lookback`` FactorSnapshots up to the one in hand, and
they come from the ``factors`` stream itself (``Bus.history_until``), not from the snapshots
this instance was handed: the Signal of a snapshot is therefore the same whichever instance
of the group computes it, however many run, in whatever order a reclaim hands them out, and
after a restart. Signal keeps no state of its own, so it scales out: any number of instances
consume the ``signal`` group at once (``deepfactor run signal``, no lease). Each instance
caches the stream's rows by message id, so a message costs one small range read of what the
cache lacks (the one new entry when a single instance handles every snapshot), not
``lookback`` decodes.

The model. When the model cannot serve (no checkpoint, factors it was not trained on, too
little history yet, an output that is not finite or mis-shaped) the trailing-IC baseline is
served instead, the Signal says ``fallback``, and ``signal.fallback`` is logged with the reason
(once per reason, until the model serves again). A Control reaches one member of the group
only, so every instance follows the registry by itself: before it predicts it reads the
``active`` pointer (one small file) and loads the version named there when it changed
(``signal.active_changed``). A ``Control reload`` re-reads the checkpoint at once, also when
the pointer did not move (a checkpoint that failed to load is tried again). ``halt`` and
``resume`` change nothing here: signals go on, and the rebalancer, which trades, obeys them.
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path

import numpy as np
import structlog

from engine.bus import Bus, Delivery, stream_id_order
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


_Row = tuple[str, np.ndarray, tuple[str, ...], np.ndarray]  # id, features, symbols, exposures


class _StreamHistory:
    """The feature rows and exposures of a topic's snapshots, read from the stream and cached
    by message id: a contiguous run of the stream, ending at the newest message read."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self.bus = bus
        self.topic = topic
        self.rows: list[_Row] = []
        self._order: list[tuple[int, int]] = []  # stream_id_order of each row, for bisection
        self._from_start = False  # the rows begin at the stream's first snapshot
        self.reads = 0  # range reads made
        self.decoded = 0  # rows built from them

    def until(self, message_id: str, length: int) -> list[_Row]:
        """The last ``length`` snapshot rows of the stream with ids up to ``message_id``
        (fewer when the stream holds fewer), oldest first."""
        order = stream_id_order(message_id)
        if self.rows and order <= self._order[-1]:
            # A message at or before the newest one read: a retry, or one reclaimed late.
            i = bisect.bisect_right(self._order, order) - 1
            if i >= 0 and self.rows[i][0] == message_id and (i + 1 >= length or self._from_start):
                return self.rows[max(0, i + 1 - length) : i + 1]
            return self._read(message_id, length, None)  # older than the cache: apart
        after = self.rows[-1][0] if self.rows else None
        new = self._read(message_id, length, after)
        # Fewer than asked: all there is between the cache and the message, so the two join.
        if after is not None and len(new) < length:
            if len(self.rows) + len(new) >= length or self._from_start:
                self.rows += new
                self._order += [stream_id_order(row[0]) for row in new]
                return self._trimmed(length)
            # Joined, they are still too short (a model reading more was loaded): read anew.
            after, new = None, self._read(message_id, length, None)
        self.rows, self._order = new, [stream_id_order(row[0]) for row in new]
        self._from_start = after is None and len(new) < length
        return self._trimmed(length)

    def _trimmed(self, length: int) -> list[_Row]:
        # Keep some slack, so that a retry or a late reclaim needs no read.
        keep = 2 * length
        if len(self.rows) > keep:
            del self.rows[:-keep], self._order[:-keep]
            self._from_start = False
        return self.rows[-length:]

    def _read(self, message_id: str, length: int, after: str | None) -> list[_Row]:
        entries = self.bus.history_until(self.topic, message_id, length, after)
        self.reads += 1
        rows: list[_Row] = []
        for entry_id, event in entries:
            snapshot = event.payload
            if isinstance(snapshot, FactorSnapshot):
                features = snapshot_features(snapshot, snapshot.factor_names)
                exposures = np.array(snapshot.exposures, dtype=np.float64)
                rows.append((entry_id, features, snapshot.symbols, exposures))
        self.decoded += len(rows)
        return rows


def _window(
    rows: list[_Row], length: int, symbols: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Features (length, K) and exposures (length, F, N) of the last ``length`` rows on
    ``symbols`` (NaN for an asset a snapshot did not have)."""
    rows = rows[-length:]
    features = np.stack([r[1] for r in rows])
    n_factors = rows[-1][3].shape[0]
    exposures = np.full((len(rows), n_factors, len(symbols)), np.nan)
    for t, (_, _, row_symbols, values) in enumerate(rows):
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
    """Publishes a Signal per FactorSnapshot (module docstring)."""

    name = "signal"
    # Members of the group may consume at once (module docstring): each message is committed
    # on its own, so a guarded commit (``Consumer.guard_duplicates``) can tell whether another
    # member already published its Signal, whatever a batch held.
    commit_each_message = True

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
        # The registry's active version when the served model was loaded (checkpoint kinds).
        self._served_active: str | None = None
        self._history = (
            _StreamHistory(bus, FactorSnapshot.TOPIC) if model != "equal-weight" else None
        )
        self._delivery: Delivery | None = None  # of the event in hand (``on_delivery``)
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
        """Load torch for a checkpoint strategy. Nothing to rebuild: the history is read from
        the stream with the first message."""
        if self.model in CHECKPOINT_KINDS:
            # The registry loads torch on first use; a checkpoint strategy loads it now (about
            # a second), so that its first Signal does not wait for it.
            import torch  # noqa: F401

    def on_delivery(self, delivery: Delivery) -> None:
        self._delivery = delivery

    def _message_id(self, event: Envelope) -> str:
        # The stream id of the snapshot in hand: where its history ends.
        delivery = self._delivery
        if delivery is None or delivery.event is not event:
            raise RuntimeError(
                "signal: a FactorSnapshot reached the handler without its delivery; the "
                "history is read up to the message id the consume loop passes to on_delivery"
            )
        return delivery.message_id

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
        # The pointer first, then that version: a pointer moved in between is seen next time.
        self._served_active = self.registry.active(self.model)
        try:
            self._served = self.registry.load(
                self.model, self._served_active, factors=names, device=self.device
            )
        except ModelError as error:
            self._load_error = str(error)
            log.error("signal.model_unavailable", strategy=self.model, error=str(error))
            return
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

    def _follow_registry(self, names: tuple[str, ...]) -> None:
        # Load the model for this factor set, or again when the registry's active version
        # moved (a reload Control reaches one instance of the group; the others see it here).
        if names != self._served_for:
            self._load(names)
            return
        if self.registry is None or self.model not in CHECKPOINT_KINDS:
            return
        try:
            active = self.registry.active(self.model)
        except OSError:
            return  # a pointer that cannot be read now: serve what is loaded, look next time
        if active != self._served_active:
            log.info(
                "signal.active_changed",
                strategy=self.model,
                served=self._served_active,
                active=active,
            )
            self._load(names)

    def _predict(
        self, snapshot: FactorSnapshot, message_id: str
    ) -> tuple[object, Prediction, str | None]:
        # (model served, its prediction, why the fallback was served or None).
        assert self._history is not None
        names = snapshot.factor_names
        if self._schedule:
            at = utc64(snapshot.asof)
            position = int(np.searchsorted(self._starts, at, side="right")) - 1
            model = self._schedule[position][1] if position >= 0 else None
            reason = None if model is not None else "before the first walk-forward fit"
        else:
            self._follow_registry(names)
            model = self._served
            reason = self._load_error
        reads = model.lookback if model is not None else 0  # type: ignore[attr-defined]
        # The snapshots of the stream up to this one: what any instance would read here.
        rows = self._history.until(message_id, max(self.lookback, reads))
        if model is not None and len(rows) < reads:
            reason = f"warming up: the model reads {reads} snapshots"
        if reason is None and model is not None:
            features, exposures = _window(rows, reads, snapshot.symbols)
            try:
                prediction = model.predict(features, exposures)  # type: ignore[attr-defined]
                reason = _invalid(prediction, len(names), len(snapshot.symbols))
            except (ValueError, RuntimeError) as error:
                reason = f"inference failed: {type(error).__name__}: {error}"
            if reason is None:
                return model, prediction, None
        baseline = TrailingICModel(names, min(self.lookback, len(rows)), "trailing-ic")
        features, exposures = _window(rows, baseline.lookback, snapshot.symbols)
        return baseline, baseline.predict(features, exposures), reason or "no model"

    def on_factors(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, FactorSnapshot)
        if self._history is None:
            self.emit([self._configured_signal(snapshot)], corr=event.corr, ts=event.ts)
            return
        names = snapshot.factor_names
        message_id = self._message_id(event)
        started = time.perf_counter()
        model, prediction, reason = self._predict(snapshot, message_id)
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

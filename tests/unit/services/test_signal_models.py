"""The signal service serving models: the active checkpoint's prediction on the same window,
the trailing-IC fallback (flagged, with the reason logged once) when the model is missing, was
trained on other factors or lacks history, a hot reload on ``Control reload``, and a restart
that rebuilds the snapshot history from what the group consumed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import structlog

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import FactorConfig
from engine.events import Control, FactorSnapshot, Signal, make_event
from services.daemons.signal import SignalService
from services.runtime.loop import Pump
from strategies.models.features import MARKET_FEATURES
from strategies.models.models import TrailingICModel
from strategies.models.registry import ModelRegistry
from strategies.models.synthetic import FACTORS, planted_regime_market
from strategies.models.training import TrainSettings, fit

T0 = datetime(2024, 1, 5, tzinfo=UTC)
LOOKBACK = 5
MARKET = planted_regime_market(periods=160, assets=12, seed=3)
DATA = MARKET.data


def snapshot(t: int, factors: tuple[str, ...] = FACTORS) -> FactorSnapshot:
    """Row ``t`` of the planted market as the factor service would publish it."""
    n = len(FACTORS)
    row = DATA.features[t]
    return FactorSnapshot(
        asof=T0 + timedelta(days=7 * t),
        symbols=DATA.symbols,
        factor_names=factors,
        exposures=tuple(tuple(float(v) for v in col) for col in DATA.exposures[t]),
        factor_ic={f: float(row[i]) for i, f in enumerate(factors)},
        factor_returns={f: float(row[n + i]) for i, f in enumerate(factors)},
        market_state={m: float(row[2 * n + i]) for i, m in enumerate(MARKET_FEATURES)},
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    settings = TrainSettings(lookback=LOOKBACK, hidden=8, epochs=3, min_train=50, device="cpu")
    model, _ = fit("lstm", DATA, DATA.usable_before(100), settings)
    registry.save("lstm", model, training={}, metrics={"validation_ic": 0.0}, activate=True)
    return registry


class Harness:
    def __init__(self, registry: Path | None, model: str = "lstm", bus: MemoryBus | None = None):
        self.bus = bus or MemoryBus()
        factors = tuple(FactorConfig(name=f) for f in FACTORS)
        self.service = SignalService(
            self.bus,
            SimulatedClock(T0),
            factors,
            model=model,
            registry=registry,
            lookback=LOOKBACK,
            device="cpu",
        )
        self.pump = Pump([self.service])
        self.out = self.bus.consumer("probe", "p", ["signals"])

    def send(self, *payloads) -> list[Signal]:
        for payload in payloads:
            topic = payload.TOPIC
            self.bus.publish(topic, make_event(payload, source="test", corr="c", ts=T0))
        self.pump.pump()
        deliveries = self.out.read(10_000)
        self.out.ack(deliveries)
        return [d.event.payload for d in deliveries]


def test_the_active_model_scores_as_its_checkpoint_does(registry):
    harness = Harness(registry.root)
    signals = harness.send(*(snapshot(t) for t in range(100, 110)))
    version = registry.active("lstm")
    model = registry.load("lstm", factors=FACTORS)
    assert len(signals) == 10
    for t, signal in zip(range(100, 110), signals):
        if t < 100 + LOOKBACK - 1:
            assert signal.fallback  # warming up: fewer snapshots than the model reads
            continue
        window = slice(t - LOOKBACK + 1, t + 1)
        expected = model.predict(DATA.features[window], DATA.exposures[window].astype(float))
        assert signal.model == version and not signal.fallback
        np.testing.assert_allclose(np.array(signal.scores, dtype=float), expected.scores)
        assert signal.selected == expected.selected
        assert set(signal.factor_weights) == set(expected.selected)
        assert signal.latency_ms > 0


def test_no_model_serves_trailing_ic_flagged_and_logs_the_reason_once(tmp_path):
    harness = Harness(tmp_path / "empty")
    with structlog.testing.capture_logs() as logs:
        signals = harness.send(*(snapshot(t) for t in range(20, 30)))
    assert all(s.fallback for s in signals)
    baseline = TrailingICModel(FACTORS, LOOKBACK)
    window = slice(29 - LOOKBACK + 1, 30)
    expected = baseline.predict(DATA.features[window], DATA.exposures[window].astype(float))
    np.testing.assert_allclose(np.array(signals[-1].scores, dtype=float), expected.scores)
    fallbacks = [e for e in logs if e["event"] == "signal.fallback"]
    assert len(fallbacks) == 1 and "no active model of strategy lstm" in fallbacks[0]["reason"]


def test_a_model_trained_on_other_factors_is_not_served(registry):
    harness = Harness(registry.root)
    other = ("momentum", "low_volatility", "value", "beta")
    with structlog.testing.capture_logs() as logs:
        signals = harness.send(*(snapshot(t, other) for t in range(100, 108)))
    assert all(s.fallback for s in signals)
    reason = next(e for e in logs if e["event"] == "signal.fallback")["reason"]
    assert "trained on factors" in reason and "beta" in reason


def test_reload_serves_the_newly_activated_version(registry, tmp_path):
    own = ModelRegistry(tmp_path / "models")
    settings = TrainSettings(lookback=LOOKBACK, hidden=8, epochs=2, min_train=50, device="cpu")
    first, _ = fit("lstm", DATA, DATA.usable_before(90), settings)
    own.save("lstm", first, training={}, metrics={}, activate=True)
    harness = Harness(own.root)
    before = harness.send(*(snapshot(t) for t in range(100, 106)))[-1]
    second, _ = fit("lstm", DATA, DATA.usable_before(120), settings)
    newer = own.save("lstm", second, training={}, metrics={}, activate=True)
    assert before.model != newer
    after = harness.send(Control(command="reload", reason="test"), snapshot(106))[-1]
    assert after.model == newer and not after.fallback


def test_a_restarted_service_rebuilds_its_history_and_signals_the_same(registry):
    calm = Harness(registry.root)
    expected = calm.send(*(snapshot(t) for t in range(100, 112)))
    bus = MemoryBus()
    first = Harness(registry.root, bus=bus)
    got = first.send(*(snapshot(t) for t in range(100, 106)))
    restarted = Harness(registry.root, bus=bus)  # a new process: history from the group
    got += restarted.send(*(snapshot(t) for t in range(106, 112)))
    assert [s.scores for s in got] == [s.scores for s in expected]
    assert [s.fallback for s in got] == [s.fallback for s in expected]


def test_a_checkpoint_reading_more_than_the_configured_lookback_is_served(tmp_path):
    # [model] lookback 5, a checkpoint trained on 8: the service keeps 8 snapshots, also after
    # a restart, instead of warming up forever.
    own = ModelRegistry(tmp_path / "models")
    settings = TrainSettings(lookback=8, hidden=8, epochs=2, min_train=50, device="cpu")
    model, _ = fit("lstm", DATA, DATA.usable_before(100), settings)
    version = own.save("lstm", model, training={}, metrics={}, activate=True)
    bus = MemoryBus()
    first = Harness(own.root, bus=bus)
    signals = first.send(*(snapshot(t) for t in range(100, 110)))
    assert [s.fallback for s in signals] == [True] * 7 + [False] * 3
    assert signals[-1].model == version
    restarted = Harness(own.root, bus=bus)
    (after,) = restarted.send(snapshot(110))
    assert not after.fallback and after.model == version

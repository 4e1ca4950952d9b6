"""Checkpoints: every model kind comes back from disk predicting exactly what it predicted
before, with a meta.json that says what it is; the active pointer; and the refusals a serving
process relies on (another factor set, nothing active, a damaged file) as ModelError."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from strategies.models import registry as registry_module
from strategies.models.base import MODEL_KINDS, ModelError
from strategies.models.dataset import PeriodData
from strategies.models.features import feature_names
from strategies.models.registry import ModelRegistry
from strategies.models.synthetic import FACTORS, planted_regime_market
from strategies.models.training import TrainSettings, fit

SETTINGS = TrainSettings(lookback=5, hidden=8, epochs=2, min_train=50, device="cpu")
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def data() -> PeriodData:
    return planted_regime_market(periods=200, assets=20, seed=11).data


@pytest.fixture(scope="module")
def models(data: PeriodData) -> dict[str, Any]:
    rows = data.usable_before(data.n_periods - 1)
    return {kind: fit(kind, data, rows, SETTINGS)[0] for kind in MODEL_KINDS}


def save(registry: ModelRegistry, strategy: str, model: Any, **kwargs: Any) -> str:
    return registry.save(
        strategy, model, training={"rows": 199}, metrics={"validation_ic": 0.1}, **kwargs
    )


def predictions(model: Any, data: PeriodData) -> list[tuple[np.ndarray, np.ndarray | None]]:
    out = []
    for t in (40, 120, data.n_periods - 1):
        window = slice(t - model.lookback + 1, t + 1)
        prediction = model.predict(data.features[window], data.exposures[window])
        out.append((prediction.scores, prediction.factor_weights))
    return out


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_saved_model_loads_back_predicting_the_same(
    kind: str, models: dict[str, Any], data: PeriodData, tmp_path: Path
):
    registry = ModelRegistry(tmp_path)
    name = save(registry, "paper", models[kind], activate=True)
    assert registry.active("paper") == name and registry.versions("paper") == [name]
    loaded = registry.load("paper", factors=FACTORS)
    assert loaded.kind == kind and loaded.version == name
    assert loaded.factors == FACTORS and loaded.lookback == models[kind].lookback
    for (scores, weights), (again, weights_again) in zip(
        predictions(models[kind], data), predictions(loaded, data)
    ):
        assert np.isfinite(scores).any()
        np.testing.assert_array_equal(again, scores)
        if weights is None:
            assert weights_again is None
        else:
            np.testing.assert_array_equal(weights_again, weights)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_meta_says_what_the_checkpoint_is(kind: str, models: dict[str, Any], tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    name = save(registry, "paper", models[kind], now=NOW)
    assert name == f"{kind}-20240301T120000000000Z"
    meta = json.loads((tmp_path / "paper" / name / "meta.json").read_text())
    assert meta["kind"] == kind and meta["version"] == name
    assert meta["factors"] == list(FACTORS)
    assert meta["features"] == list(feature_names(FACTORS))
    assert meta["lookback"] == (1 if kind == "equal-weight" else SETTINGS.lookback)
    normaliser = getattr(models[kind], "normaliser", None)
    if kind in ("lstm", "ridge"):
        assert normaliser is not None
        assert meta["normalisation"] == {
            "mean": normaliser.mean.tolist(),
            "std": normaliser.std.tolist(),
        }
        assert len(meta["normalisation"]["mean"]) == len(feature_names(FACTORS))
    else:
        assert meta["normalisation"] is None
    assert {"python", "torch", "numpy"} <= set(meta["versions"])
    assert "git_commit" in meta
    assert meta["training"] == {"rows": 199} and meta["metrics"] == {"validation_ic": 0.1}


def test_activate_moves_the_active_pointer(models: dict[str, Any], tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    assert registry.active("paper") is None
    first = save(registry, "paper", models["ridge"], activate=True, now=NOW)
    second = save(registry, "paper", models["lstm"], now=NOW.replace(hour=13))
    assert registry.active("paper") == first  # saved, not activated
    assert registry.load("paper").kind == "ridge"
    registry.activate("paper", second)
    assert registry.active("paper") == second
    assert registry.load("paper").kind == "lstm"
    assert registry.versions("paper") == sorted([first, second])
    with pytest.raises(ModelError, match="no checkpoint lstm-nothing of strategy paper"):
        registry.activate("paper", "lstm-nothing")
    assert registry.active("paper") == second


@pytest.mark.parametrize(
    "live",
    [tuple(reversed(FACTORS)), FACTORS[:3], (*FACTORS, "quality")],
    ids=["other-order", "one-missing", "one-more"],
)
def test_loading_for_another_factor_set_is_refused_naming_both(
    live: tuple[str, ...], models: dict[str, Any], tmp_path: Path
):
    registry = ModelRegistry(tmp_path)
    save(registry, "paper", models["lstm"], activate=True)
    with pytest.raises(ModelError) as refused:
        registry.load("paper", factors=live)
    message = str(refused.value)
    assert str(list(FACTORS)) in message and str(list(live)) in message


def test_no_active_model_is_refused_naming_the_strategy(tmp_path: Path):
    with pytest.raises(ModelError, match="no active model of strategy paper-fast"):
        ModelRegistry(tmp_path).load("paper-fast")


CORRUPTIONS = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage": lambda good: b"not a checkpoint\n" * 8,
    "empty": lambda good: b"",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_weights_file_is_a_model_error(
    corruption: str, models: dict[str, Any], tmp_path: Path
):
    """The signal service and the retrain challenge catch ModelError, nothing else."""
    registry = ModelRegistry(tmp_path)
    name = save(registry, "paper", models["lstm"], activate=True)
    weights = tmp_path / "paper" / name / "model.pt"
    weights.write_bytes(CORRUPTIONS[corruption](weights.read_bytes()))
    with pytest.raises(ModelError, match="weights unreadable"):
        registry.load("paper", factors=FACTORS)


def test_an_interrupted_save_is_never_listed(
    models: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    registry = ModelRegistry(tmp_path)
    kept = save(registry, "paper", models["ridge"], now=NOW)

    def crash(source: Any, target: Any) -> None:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(registry_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save(registry, "paper", models["lstm"], now=NOW.replace(hour=13))
    monkeypatch.setattr(registry_module.os, "replace", os.replace)
    assert any(p.name.endswith(".partial") for p in (tmp_path / "paper").iterdir())
    assert registry.versions("paper") == [kept]


def test_a_partial_folder_without_meta_is_not_listed(models: dict[str, Any], tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    kept = save(registry, "paper", models["ridge"], now=NOW)
    (tmp_path / "paper" / ".lstm-20240301T130000000000Z.partial").mkdir()
    assert registry.versions("paper") == [kept]

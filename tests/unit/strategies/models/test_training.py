"""Training: a fit at a cutoff reads nothing unknown at that time, the walk-forward windows
train only on labels already known and test on what follows, fits are reproducible from the
seed, early stopping stops and keeps the best epoch, and bad settings are refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from strategies.models.base import ModelError, composite_scores
from strategies.models.dataset import PeriodData, rank_labels, windows
from strategies.models.networks import composite, factor_weights, ic_loss
from strategies.models.synthetic import planted_regime_market
from strategies.models.training import (
    MIN_ASSETS,
    MIN_FIT_SAMPLES,
    TrainSettings,
    fit,
    walk_forward,
    walk_forward_windows,
)

SETTINGS = TrainSettings(lookback=5, hidden=8, epochs=3, min_train=50, device="cpu")
CUTOFF = 90


@pytest.fixture(scope="module")
def data() -> PeriodData:
    return planted_regime_market(periods=120, assets=12, seed=21).data


def predict(model: Any, data: PeriodData, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    window = slice(t - model.lookback + 1, t + 1)
    prediction = model.predict(data.features[window], data.exposures[window])
    return prediction.scores, prediction.factor_weights


def same_numbers(a: Any, b: Any) -> bool:
    left, right = a.tensors(), b.tensors()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


# -- no look-ahead -------------------------------------------------------------------------------
def unknown_at(data: PeriodData, cutoff: int, seed: int) -> PeriodData:
    """``data`` with everything not yet known at ``times[cutoff]`` replaced by garbage.

    At times[cutoff] one knows the snapshots up to and including row ``cutoff``: its features
    (what was realised over cutoff-1 -> cutoff) and its exposures; and the returns of rows up
    to cutoff - 1 (row t's return runs from t to t + 1, so row cutoff - 1's arrives exactly
    now). Unknown: the returns of rows >= cutoff, the features and exposures of rows > cutoff.
    Exactly those are replaced: no more (an honest fit reading row ``cutoff``'s features or
    row ``cutoff - 1``'s return would differ) and no less (a fit peeking one row past the
    boundary would pass).
    """
    rng = np.random.default_rng(seed)
    returns, features, exposures = data.returns.copy(), data.features.copy(), data.exposures.copy()
    returns[cutoff:] = (1e3 + rng.normal(size=returns[cutoff:].shape)).astype(np.float32)
    features[cutoff + 1 :] = rng.normal(0.0, 1e3, features[cutoff + 1 :].shape)
    exposures[cutoff + 1 :] = rng.normal(0.0, 1e3, exposures[cutoff + 1 :].shape)
    return dataclasses.replace(data, returns=returns, features=features, exposures=exposures)


@pytest.mark.parametrize("kind", ["lstm", "ridge", "asset-lstm"])
def test_a_fit_at_a_cutoff_ignores_everything_unknown_then(kind: str, data: PeriodData):
    rows = data.usable_before(CUTOFF)
    assert rows[-1] == CUTOFF - 1  # the boundary row is usable: its label arrives exactly now
    honest, _ = fit(kind, data, rows, SETTINGS)
    blind, _ = fit(kind, unknown_at(data, CUTOFF, seed=1), rows, SETTINGS)
    assert same_numbers(honest, blind)
    for t in (CUTOFF, CUTOFF + 10):  # the same inputs to both models: the same outputs
        for a, b in zip(predict(honest, data, t), predict(blind, data, t)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["lstm", "ridge", "asset-lstm"])
def test_the_comparison_does_see_garbage_in_a_training_row(kind: str, data: PeriodData):
    """The control: garbage in one row thirty periods before the cutoff changes the fit, so the
    test above would catch a fit that read its garbage."""
    rows = data.usable_before(CUTOFF)
    honest, _ = fit(kind, data, rows, SETTINGS)
    rng = np.random.default_rng(1)
    returns, features = data.returns.copy(), data.features.copy()
    returns[CUTOFF - 30] = 1e3 + rng.normal(size=returns.shape[1])  # a training row's label
    features[CUTOFF - 29] = rng.normal(0.0, 1e3, features.shape[1])  # and its realised ICs
    inside = dataclasses.replace(data, returns=returns, features=features)
    poisoned, _ = fit(kind, inside, rows, SETTINGS)
    assert not same_numbers(honest, poisoned)


# -- walk-forward windows ------------------------------------------------------------------------
def test_walk_forward_windows_train_on_known_labels_and_test_on_what_follows(data: PeriodData):
    settings = TrainSettings(lookback=5, min_train=50, retrain_every=20, device="cpu")
    plan = walk_forward_windows(data, settings)
    last_labelled = data.n_periods - 2  # the last row has no label to score against
    assert [w.cutoff for w in plan] == list(range(50, last_labelled + 1, 20))
    for window in plan:
        assert data.label_times[window.train_rows].max() <= data.times[window.cutoff]
        np.testing.assert_array_equal(window.train_rows, np.arange(4, window.cutoff))  # expanding
        end = min(window.cutoff + 20, last_labelled + 1)
        np.testing.assert_array_equal(window.test_rows, np.arange(window.cutoff, end))
    tested = np.concatenate([w.test_rows for w in plan])
    np.testing.assert_array_equal(tested, np.arange(50, last_labelled + 1))  # each once


def test_a_rolling_window_keeps_the_latest_train_periods(data: PeriodData):
    settings = TrainSettings(
        lookback=5, min_train=50, retrain_every=25, window="rolling", train_periods=30
    )
    for window in walk_forward_windows(data, settings):
        assert len(window.train_rows) == 30
        np.testing.assert_array_equal(
            window.train_rows, np.arange(window.cutoff - 30, window.cutoff)
        )
        assert data.label_times[window.train_rows].max() <= data.times[window.cutoff]
        assert window.test_rows[0] == window.cutoff


def test_no_window_after_min_train_is_refused(data: PeriodData):
    with pytest.raises(ModelError, match="120 periods leave no walk-forward window"):
        walk_forward_windows(data, TrainSettings(min_train=119))


def test_refit_points_with_too_few_usable_samples_are_skipped(data: PeriodData):
    """A market where few assets trade at first (a young exchange): rows with fewer than
    MIN_ASSETS scorable assets teach nothing, and a refit point that has fewer than
    MIN_FIT_SAMPLES usable rows is left out instead of failing the whole walk-forward."""
    exposures = data.exposures.copy()
    exposures[:70, :, MIN_ASSETS - 1 :] = np.nan  # rows 0..69: only MIN_ASSETS - 1 assets
    young = dataclasses.replace(data, exposures=exposures)
    settings = TrainSettings(lookback=5, min_train=50, retrain_every=10, device="cpu")
    plan = walk_forward_windows(young, settings)
    # Usable rows start at 70; a cutoff needs MIN_FIT_SAMPLES of them before it.
    first = 70 + MIN_FIT_SAMPLES
    assert [w.cutoff for w in plan] == list(range(first, data.n_periods - 1, 10))
    for window in plan:  # each of them fits
        fit("ridge", young, window.train_rows, settings)
    with pytest.raises(ModelError, match="usable samples"):
        walk_forward_windows(young, dataclasses.replace(settings, min_train=50, retrain_every=200))


def test_a_first_window_without_training_rows_is_a_model_error(data: PeriodData):
    """The first test rows would also be scored on windows reaching before row 0."""
    with pytest.raises(ModelError, match="min_train \\(10\\) must exceed lookback \\(20\\)"):
        TrainSettings(lookback=20, min_train=10, retrain_every=20, device="cpu")


def spearman_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson on ranks (no ties in continuous data)."""
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def test_walk_forward_scores_every_test_row_against_its_realised_returns(data: PeriodData):
    settings = TrainSettings(lookback=5, min_train=80, retrain_every=15, device="cpu")
    result = walk_forward(data, ("equal-weight",), settings)
    np.testing.assert_array_equal(result.test_rows, np.arange(80, data.n_periods - 1))
    expected = [
        spearman_by_hand(composite_scores(np.full(4, 0.25), data.exposures[t]), data.returns[t])
        for t in result.test_rows
    ]
    np.testing.assert_allclose(result.ic["equal-weight"], expected, rtol=1e-9)
    starts = [when for when, _ in result.schedule["equal-weight"]]
    np.testing.assert_array_equal(starts, data.times[[80, 95, 110]])


# -- reproducibility -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "asset-lstm"])
def test_the_seed_decides_the_fit(kind: str, data: PeriodData):
    rows = data.usable_before(CUTOFF)
    first, _ = fit(kind, data, rows, SETTINGS)
    again, _ = fit(kind, data, rows, SETTINGS)
    other, _ = fit(kind, data, rows, dataclasses.replace(SETTINGS, seed=1))
    assert same_numbers(first, again)
    assert not same_numbers(first, other)


# -- early stopping ------------------------------------------------------------------------------
def validation_loss_of(model: Any, data: PeriodData, rows: np.ndarray) -> float:
    """The IC loss of the fitted network's soft weights on ``rows``, rebuilt outside training."""
    direction, gate = model.gates(windows(data.features, rows, model.lookback))  # it normalises
    weights = factor_weights(torch.from_numpy(direction), torch.from_numpy(gate))
    scores = composite(weights, torch.from_numpy(np.nan_to_num(data.exposures[rows])))
    mask = np.isfinite(data.exposures[rows]).all(axis=1) & np.isfinite(data.returns[rows])
    labels = np.nan_to_num(rank_labels(data.returns[rows]))
    return float(ic_loss(scores, torch.from_numpy(labels), torch.from_numpy(mask)))


def test_early_stopping_stops_on_noise_and_keeps_the_best_epoch():
    noise = planted_regime_market(periods=150, assets=20, premium=0.0, seed=4).data
    settings = dataclasses.replace(SETTINGS, epochs=60, patience=1, learning_rate=5e-2)
    model, report = fit("lstm", noise, noise.usable_before(149), settings)
    assert report.epochs < settings.epochs
    losses = [row["validation_loss"] for row in report.history]
    assert len(losses) == report.epochs
    # With patience 1 the first epoch that does not improve on the best so far is the last.
    stop = next(e for e in range(1, len(losses)) if losses[e] >= min(losses[:e]) - 1e-6)
    assert report.epochs == stop + 1
    assert report.best_epoch == int(np.argmin(losses)) + 1 < report.epochs
    assert report.validation_loss == min(losses)
    # The model returned is the best epoch's, not the last one's.
    rebuilt = validation_loss_of(model, noise, report.validation)
    assert rebuilt == pytest.approx(report.validation_loss, abs=1e-5)
    assert rebuilt != pytest.approx(losses[-1], abs=1e-5)


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objective": "sharpe"}, "objective must be one of"),
        ({"window": "sliding"}, "window must be expanding or rolling"),
        ({"lookback": 0}, "lookback >= 1"),
        ({"min_train": 29}, "must exceed lookback"),
        ({"retrain_every": 0}, "retrain_every >= 1"),
    ],
)
def test_train_settings_refuse_what_cannot_train(change: dict[str, Any], message: str):
    with pytest.raises(ModelError, match=message):
        TrainSettings(**change)


def test_an_unknown_kind_is_refused(data: PeriodData):
    with pytest.raises(ModelError, match="model kind must be one of"):
        fit("transformer", data, data.usable_before(CUTOFF), SETTINGS)

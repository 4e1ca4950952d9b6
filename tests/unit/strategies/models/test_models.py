"""Each model's prediction from numbers set by hand: the factor weights it should choose, the
composite scores those weights give, the LSTM's gate selection, and what cannot be scored."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from strategies.models.base import ModelError, composite_scores, unit_gross
from strategies.models.dataset import Normaliser
from strategies.models.features import feature_names
from strategies.models.models import (
    AssetLSTMModel,
    EqualWeightModel,
    FactorLSTMModel,
    RidgeModel,
    TrailingICModel,
    resolve_device,
)
from strategies.models.networks import AssetLSTM, FactorWeightLSTM

NAN = math.nan
FACTORS = ("momentum", "low_volatility", "value", "size")
F, K, N = len(FACTORS), len(feature_names(FACTORS)), 7
LOOKBACK = 3


def exposures(seed: int, lookback: int = LOOKBACK) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(lookback, F, N))


def scores_by_hand(weights: list[float], last: np.ndarray) -> list[float]:
    """Weighted sum of the z-scored (population std, over its own valid assets) exposures of
    the factors with a non-zero weight; NaN for an asset missing any of them."""
    columns = []
    for f, w in enumerate(weights):
        if w == 0.0:
            continue
        present = [v for v in last[f] if not math.isnan(v)]
        mean, std = statistics.fmean(present), statistics.pstdev(present)
        columns.append([w * (v - mean) / std for v in last[f]])
    return [sum(c[i] for c in columns) for i in range(last.shape[1])]


def unit_gross_by_hand(values: list[float]) -> list[float]:
    total = sum(abs(v) for v in values)
    return [v / total for v in values]


# -- composite scores ----------------------------------------------------------------------------
def test_composite_scores_sum_z_scored_factors_and_refuse_an_asset_missing_one():
    last = exposures(0)[-1]
    last[1, 2] = NAN  # a used factor missing: not scorable
    last[3, 5] = NAN  # an unused factor missing: no matter
    weights = [0.5, -0.3, 0.2, 0.0]
    scores = composite_scores(np.array(weights), last)
    np.testing.assert_allclose(scores, scores_by_hand(weights, last), rtol=1e-12)
    assert np.isnan(scores[2]) and np.isfinite(np.delete(scores, 2)).all()


def test_composite_scores_of_no_weight_are_all_missing():
    assert np.isnan(composite_scores(np.zeros(F), exposures(1)[-1])).all()


# -- baselines -----------------------------------------------------------------------------------
def test_equal_weight_weighs_every_factor_a_quarter():
    x = exposures(2)
    prediction = EqualWeightModel(FACTORS).predict(np.zeros((1, K)), x[-1:])
    np.testing.assert_array_equal(prediction.factor_weights, [0.25] * 4)
    assert prediction.selected == FACTORS
    np.testing.assert_allclose(prediction.scores, scores_by_hand([0.25] * 4, x[-1]), rtol=1e-12)


def test_trailing_ic_weighs_each_factor_by_its_mean_ic_over_the_window():
    rng = np.random.default_rng(3)
    features = rng.normal(0.0, 0.1, (LOOKBACK, K))
    features[:, 2] = 0.0  # never any evidence on "value": weight 0, not selected
    x = exposures(3)
    prediction = TrailingICModel(FACTORS, LOOKBACK).predict(features, x)
    means = [statistics.fmean(features[:, f]) for f in range(F)]
    expected = unit_gross_by_hand(means)
    np.testing.assert_allclose(prediction.factor_weights, expected, rtol=1e-12)
    assert prediction.selected == ("momentum", "low_volatility", "size")
    np.testing.assert_allclose(prediction.scores, scores_by_hand(expected, x[-1]), rtol=1e-12)


def test_trailing_ic_without_evidence_weighs_equally():
    features = np.zeros((LOOKBACK, K))
    features[:, F:] = 0.3  # spreads and market state are not ICs
    prediction = TrailingICModel(FACTORS, LOOKBACK).predict(features, exposures(4))
    np.testing.assert_array_equal(prediction.factor_weights, [0.25] * 4)


def test_ridge_weights_are_the_predicted_ics_of_the_clipped_window():
    rng = np.random.default_rng(5)
    features = rng.integers(-12, 13, (LOOKBACK, K)) / 4.0  # exact in float32
    features[0, 0], features[2, 3] = 7.0, -6.0  # beyond 5 standard deviations: clipped
    coef = rng.normal(size=(F, LOOKBACK * K))
    intercept = rng.normal(0.0, 0.1, F)
    model = RidgeModel(FACTORS, LOOKBACK, Normaliser(np.zeros(K), np.ones(K)), coef, intercept)
    x = [min(max(v, -5.0), 5.0) for row in features for v in row]  # oldest period first
    raw = [sum(c * v for c, v in zip(coef[f], x)) + intercept[f] for f in range(F)]
    prediction = model.predict(features, exposures(5))
    np.testing.assert_allclose(prediction.factor_weights, unit_gross_by_hand(raw), rtol=1e-10)
    np.testing.assert_allclose(
        prediction.scores, scores_by_hand(unit_gross_by_hand(raw), exposures(5)[-1]), rtol=1e-9
    )


# -- the factor LSTM -----------------------------------------------------------------------------
def fixed_lstm(direction_bias: list[float], gate_bias: list[float]) -> FactorLSTMModel:
    """An LSTM whose heads ignore the history: direction tanh(bias), gate sigmoid(bias)."""
    torch.manual_seed(0)
    network = FactorWeightLSTM(K, F, hidden=8)
    with torch.no_grad():
        network.direction.weight.zero_()
        network.direction.bias.copy_(torch.tensor(direction_bias))
        network.gate.weight.zero_()
        network.gate.bias.copy_(torch.tensor(gate_bias))
    return FactorLSTMModel(FACTORS, LOOKBACK, Normaliser(np.zeros(K), np.ones(K)), network)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_lstm_drops_the_factors_whose_gate_is_below_one_half():
    direction, gate = [0.8, -1.2, 0.5, 2.0], [2.0, 1.0, -0.5, -3.0]
    model = fixed_lstm(direction, gate)
    features = np.random.default_rng(6).normal(size=(LOOKBACK, K))
    x = exposures(6)
    prediction = model.predict(features, x)
    kept = [
        math.tanh(d) * sigmoid(g) if sigmoid(g) >= 0.5 else 0.0 for d, g in zip(direction, gate)
    ]
    expected = unit_gross_by_hand(kept)
    np.testing.assert_allclose(prediction.factor_weights, expected, rtol=1e-6)
    assert prediction.selected == ("momentum", "low_volatility")
    assert prediction.factor_weights[2] == 0.0 and prediction.factor_weights[3] == 0.0
    np.testing.assert_allclose(prediction.scores, scores_by_hand(expected, x[-1]), rtol=1e-6)


def test_lstm_with_every_gate_closed_still_selects_its_most_confident_factor():
    model = fixed_lstm([0.8, -1.2, 0.5, 2.0], [-30.0, -20.0, -25.0, -40.0])
    features = np.random.default_rng(7).normal(size=(LOOKBACK, K))
    prediction = model.predict(features, exposures(7))
    assert prediction.selected == ("low_volatility",)
    np.testing.assert_array_equal(prediction.factor_weights, [0.0, -1.0, 0.0, 0.0])


def test_lstm_with_a_very_negative_gate_bias_never_selects_nothing():
    """A trained-looking network (random weights) whose gates are all shut by the bias."""
    torch.manual_seed(1)
    network = FactorWeightLSTM(K, F, hidden=8)
    with torch.no_grad():
        network.gate.bias.fill_(-50.0)
    model = FactorLSTMModel(FACTORS, LOOKBACK, Normaliser(np.zeros(K), np.ones(K)), network)
    features = np.random.default_rng(8).normal(size=(LOOKBACK, K))
    _, gate = model.gates(features)
    assert (gate < 0.5).all()
    prediction = model.predict(features, exposures(8))
    assert prediction.selected == (FACTORS[int(np.argmax(gate[0]))],)
    assert np.count_nonzero(prediction.factor_weights) == 1
    assert np.abs(prediction.factor_weights).sum() == pytest.approx(1.0)
    assert np.isfinite(prediction.scores).all()


# -- the asset LSTM ------------------------------------------------------------------------------
def test_asset_lstm_scores_each_asset_from_its_own_history_alone():
    torch.manual_seed(2)
    network = AssetLSTM(F, hidden=8)
    model = AssetLSTMModel(FACTORS, LOOKBACK, network)
    x = exposures(9)
    prediction = model.predict(np.zeros((LOOKBACK, K)), x)
    assert prediction.factor_weights is None and prediction.selected == FACTORS
    for asset in range(N):
        history = torch.from_numpy(x[:, :, asset].astype(np.float32))  # (lookback, factors)
        with torch.no_grad():
            alone = float(network.head(network.lstm(history[None])[0][:, -1])[0, 0])
        assert prediction.scores[asset] == pytest.approx(alone, rel=1e-5, abs=1e-6)


def test_asset_lstm_cannot_score_an_asset_missing_an_exposure_now():
    torch.manual_seed(3)
    model = AssetLSTMModel(FACTORS, LOOKBACK, AssetLSTM(F, hidden=8))
    x = exposures(10)
    x[-1, 2, 4] = NAN  # missing in the decision period: NaN
    x[0, 1, 1] = NAN  # missing earlier only: read as 0, still scored
    scores = model.predict(np.zeros((LOOKBACK, K)), x).scores
    assert np.isnan(scores[4])
    assert np.isfinite(np.delete(scores, 4)).all()


# -- devices -------------------------------------------------------------------------------------
def test_resolve_device_follows_what_torch_sees():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        assert resolve_device("cuda").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:0", ""])
def test_resolve_device_refuses_unknown_names(name: str):
    with pytest.raises(ModelError, match="device must be auto, cpu or cuda"):
        resolve_device(name)


def test_unit_gross_keeps_signs_and_leaves_zero_alone():
    np.testing.assert_allclose(unit_gross(np.array([2.0, -1.0, 1.0])), [0.5, -0.25, 0.25])
    np.testing.assert_array_equal(unit_gross(np.zeros(3)), np.zeros(3))

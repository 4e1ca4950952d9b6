"""Can it learn? On a market whose paying factor switches with a regime that the market state
reveals at once (and realised ICs only after the switch), the factor LSTM must beat the
trailing-IC and equal-weight baselines out of sample, and its factor weights must follow the
planted ones. Without this the model is a costly way to weigh factors equally."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.models.synthetic import planted_regime_market
from strategies.models.training import TrainSettings, ic_summary, walk_forward

SETTINGS = TrainSettings(
    lookback=10,
    hidden=16,
    epochs=40,
    learning_rate=2e-2,
    min_train=200,
    retrain_every=100,
    device="cpu",
    patience=6,
    seed=0,
)
BASELINES = ("trailing-ic", "equal-weight")
PAYING, NEVER_PAYING = [0, 1], [2, 3]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_lstm_beats_the_baselines_out_of_sample_and_finds_the_planted_factors(seed: int):
    market = planted_regime_market(
        periods=600, assets=50, persistence=0.9, state_noise=0.3, seed=seed
    )
    result = walk_forward(market.data, ("lstm", *BASELINES), SETTINGS)
    assert result.test_rows[0] == SETTINGS.min_train  # every figure below is out of sample

    summary = result.summary()
    print(f"\nseed {seed}: mean OOS IC", {k: round(v["mean_ic"], 4) for k, v in summary.items()})
    for baseline in BASELINES:
        edge = ic_summary(result.ic["lstm"] - result.ic[baseline])
        print(
            f"seed {seed}: lstm - {baseline}: mean {edge['mean_ic']:.4f}, "
            f"t {edge['t_stat']:.2f} over {edge['periods']} periods"
        )
        assert edge["t_stat"] > 2.0, baseline

    weights = result.weights["lstm"]
    planted = market.planted[result.test_rows]
    for f in PAYING:
        tracking = np.corrcoef(weights[:, f], planted[:, f])[0, 1]
        print(f"seed {seed}: corr(lstm weight, planted) of factor {f}: {tracking:.3f}")
        assert tracking > 0.5, f
    paying = np.abs(weights[:, PAYING]).mean()
    never = np.abs(weights[:, NEVER_PAYING]).mean()
    print(f"seed {seed}: mean |weight| paying {paying:.3f}, never paying {never:.4f}")
    assert never < paying

"""The target builder fits the risk model ``[portfolio] risk_model`` names."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import PortfolioConfig, RiskConfig
from engine.portfolio import ledoit_wolf_model, pca_model
from services.daemons import targets as targets_module
from services.daemons.targets import TargetBuilder


def window_returns(n_periods: int, n_assets: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.03, (n_periods, 1))
    return market * rng.uniform(0.5, 1.5, n_assets) + rng.normal(0.0, 0.04, (n_periods, n_assets))


@pytest.mark.parametrize("risk_model", ["ledoit-wolf", "pca"])
def test_the_optimiser_solves_with_the_configured_risk_model(monkeypatch, risk_model):
    fitted = []

    def spy(fit):
        def wrapped(*args):
            model = fit(*args)
            fitted.append((fit.__name__, args[1:], model))
            return model

        return wrapped

    monkeypatch.setattr(targets_module, "ledoit_wolf_model", spy(ledoit_wolf_model))
    monkeypatch.setattr(targets_module, "pca_model", spy(pca_model))
    portfolio = PortfolioConfig(risk_model=risk_model, risk_factors=4, covariance_window=60)
    builder = TargetBuilder(portfolio, RiskConfig(enabled=False))
    returns = window_returns(80, 12)
    scores = np.random.default_rng(1).normal(size=12)
    decision = builder.build(scores, returns, np.zeros(12), 365.0, limits=False)

    name, arguments, model = fitted[-1]
    assert name == ("pca_model" if risk_model == "pca" else "ledoit_wolf_model")
    assert arguments == ((4,) if risk_model == "pca" else ())
    assert model.loadings.shape == ((4, 12) if risk_model == "pca" else (60, 12))
    assert decision.weights.sum() > 0 and decision.solve_ms is not None

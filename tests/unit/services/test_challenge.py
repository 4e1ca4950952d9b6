"""The challenge that decides activation compares both models on the same validation
periods: a better challenger takes over, a worse one is saved but not activated, and an
active model that cannot be loaded (or was trained on other factors) never blocks a new one."""

from __future__ import annotations

import numpy as np
import pytest

from services.commands.challenge import challenge
from strategies.models.models import EqualWeightModel
from strategies.models.registry import ModelRegistry
from strategies.models.synthetic import planted_regime_market
from strategies.models.training import TrainSettings, fit, score_rows

MARKET = planted_regime_market(periods=400, assets=40, persistence=0.9, state_noise=0.3, seed=5)
DATA = MARKET.data
SETTINGS = TrainSettings(
    lookback=10, hidden=16, epochs=40, learning_rate=2e-2, min_train=100, device="cpu"
)


@pytest.fixture(scope="module")
def trained():
    return fit("lstm", DATA, DATA.usable_before(399), SETTINGS)


def test_a_better_challenger_takes_over(tmp_path, trained):
    model, report = trained
    registry = ModelRegistry(tmp_path)
    registry.save("lstm", EqualWeightModel(DATA.factors), training={}, metrics={}, activate=True)
    verdict = challenge(registry, "lstm", model, DATA, report.validation)
    equal = np.nanmean(score_rows(EqualWeightModel(DATA.factors), DATA, report.validation))
    assert verdict.challenger_wins and verdict.reason == "higher validation IC"
    assert verdict.active_ic == pytest.approx(equal)
    assert verdict.challenger_ic > verdict.active_ic


def test_a_worse_challenger_is_not_activated(tmp_path, trained):
    model, report = trained
    registry = ModelRegistry(tmp_path)
    registry.save("lstm", model, training={}, metrics={}, activate=True)
    verdict = challenge(registry, "lstm", EqualWeightModel(DATA.factors), DATA, report.validation)
    assert not verdict.challenger_wins and verdict.reason == "validation IC not higher"
    assert verdict.active_ic > verdict.challenger_ic


def test_no_or_an_unusable_active_model_never_blocks(tmp_path, trained):
    model, report = trained
    registry = ModelRegistry(tmp_path)
    assert challenge(registry, "lstm", model, DATA, report.validation).reason == "no active model"
    other = EqualWeightModel(("a", "b", "c", "d"))
    registry.save("lstm", other, training={}, metrics={}, activate=True)
    verdict = challenge(registry, "lstm", model, DATA, report.validation)
    assert verdict.challenger_wins and verdict.reason.startswith("active model unusable")

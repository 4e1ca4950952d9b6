"""The verdict that ends ``deepfactor evaluate``'s table: the factor-weight LSTM (limits on)
against every classical baseline on maximum drawdown, Sharpe ratio and 95% VaR, and on the
Sharpe ratio in each regime."""

from __future__ import annotations

from typing import Any

import pytest

from services.commands.evaluate_output import verdict

BASELINES = ("equal-weight", "trailing-ic", "ridge")


def figures(max_drawdown: float, sharpe: float, var_95: float, regimes: dict[str, float]):
    return {
        "mean": {"max_drawdown": max_drawdown, "sharpe_ratio": sharpe, "var_95": var_95},
        "regimes_mean": {r: {"sharpe_ratio": s} for r, s in regimes.items()},
    }


def results(lstm: dict[str, Any], baseline: dict[str, Any], p_value: float = 0.5):
    strategies = {
        "lstm": {"label": "Factor-weight LSTM", "classical": False, "limits_on": lstm},
        # Not classical: the universe never enters the verdict, however well it does.
        "universe": {
            "label": "Equal-weight universe",
            "classical": False,
            "limits_on": figures(0.01, 9.0, 0.001, {"bull": 9.0, "bear": 9.0}),
        },
    }
    for key in BASELINES:
        strategies[key] = {
            "label": f"{key} (classical)",
            "classical": True,
            "limits_on": baseline,
        }
    tests = [
        {"strategy": "lstm", "baseline": key, "limits": limits, "jkm_seed_mean": {"p_value": p}}
        for key in BASELINES
        for limits, p in (("on", p_value), ("off", 0.0001))
    ]
    return {"strategies": strategies, "sharpe_tests": tests}


BASE = figures(0.30, 0.8, 0.020, {"bull": 1.0, "bear": -0.5})


def test_better_on_every_figure_and_regime_holds():
    found = verdict(results(figures(0.20, 1.2, 0.015, {"bull": 1.5, "bear": 0.1}), BASE, 0.01))
    assert found["outcome"] == "holds"
    assert found["sentence"].startswith("The paper's claim holds on this data:")
    assert "significantly higher (Jobson-Korkie-Memmel, 5%) than 3 of the 3" in found["sentence"]
    assert found["figures_better_than_every_baseline"] == ["max_drawdown", "sharpe_ratio", "var_95"]


def test_worse_on_everything_does_not_hold():
    found = verdict(results(figures(0.40, 0.5, 0.025, {"bull": 0.5, "bear": -1.0}), BASE))
    assert found["outcome"] == "does not hold"
    assert found["sentence"].startswith("The paper's claim does not hold on this data:")
    assert "than 0 of the 3" in found["sentence"]


def test_mixed_holds_in_part_and_says_which_part():
    found = verdict(results(figures(0.20, 0.7, 0.015, {"bull": 0.9, "bear": 0.0}), BASE))
    assert found["outcome"] == "holds in part"
    sentence = found["sentence"]
    assert sentence.startswith("The paper's claim holds in part on this data:")
    assert "a better maximum drawdown and 95% VaR than every classical baseline" in sentence
    assert "but not a better Sharpe ratio" in sentence
    assert "in the bear regime, not in bull" in sentence


def test_every_figure_but_not_every_regime_is_only_in_part():
    found = verdict(results(figures(0.20, 1.2, 0.015, {"bull": 1.5, "bear": -0.9}), BASE))
    assert found["outcome"] == "holds in part"
    assert "in the bull regime, not in bear" in found["sentence"]


def test_one_baseline_beating_the_lstm_breaks_that_figure():
    data = results(figures(0.20, 1.2, 0.015, {"bull": 1.5, "bear": 0.1}), BASE)
    data["strategies"]["ridge"] = {
        "label": "ridge (classical)",
        "classical": True,
        "limits_on": figures(0.10, 0.8, 0.020, {"bull": 1.0, "bear": -0.5}),
    }
    found = verdict(data)
    assert found["by_figure"]["max_drawdown"] == {
        "equal-weight": True,
        "trailing-ic": True,
        "ridge": False,
    }
    assert "max_drawdown" not in found["figures_better_than_every_baseline"]


def test_a_tie_is_not_better():
    found = verdict(results(figures(0.30, 0.8, 0.020, {"bull": 1.0, "bear": -0.5}), BASE, 0.01))
    assert found["outcome"] == "does not hold"
    # A significant p-value does not count where the LSTM's Sharpe ratio is not the higher.
    assert "than 0 of the 3" in found["sentence"]


def test_without_the_lstm_or_a_classical_baseline_there_is_no_verdict():
    data = results(BASE, BASE)
    del data["strategies"]["lstm"]
    with pytest.raises(ValueError, match="lstm"):
        verdict(data)
    data = results(BASE, BASE)
    for key in BASELINES:
        del data["strategies"][key]
    with pytest.raises(ValueError, match="classical"):
        verdict(data)

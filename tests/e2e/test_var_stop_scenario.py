"""The VaR stop through the COVID crash of the bundled sample: ``deploy/configs/crash-limits
.toml`` with its drawdown stop off, so that the VaR limit works alone, replayed in one process
with ``[risk] var_check = "rebalance"`` (the limit acts on each weekly target) and
``"every-bar"`` (also the VaR stop, between rebalances).

The stop must act in the crash between rebalances, every cut must put the book back onto the
limit, it must cut the crash's worst day, and blocks of quiet bars must change nothing (the
backtest sends the bars on which a stop could act one by one).
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from engine.config import Config, load_config
from tests.e2e.test_risk_scenario import CONFIG, crash_returns, in_crash, replay, window_of

# Measured (a deterministic replay): the stop acts 4 times (2020-02-28, 03-11, 03-13, 03-18)
# and the worst day of the crash falls from -9.19% (weekly checks only) to -7.45%.
WORST_DAY_CUT = 0.01


def var_alone(check: str) -> Config:
    config = load_config(CONFIG, {})  # no DEEPFACTOR_* variable of the caller's may change it
    risk = msgspec.structs.replace(
        config.risk, var_check=check, var_stop_band=0.1, drawdown_stop=0.0
    )
    return msgspec.structs.replace(config, risk=risk)


@pytest.fixture(scope="module")
def runs():
    config = var_alone("every-bar")
    panel = window_of(config)
    return (
        config,
        panel,
        replay(config, panel),
        replay(config, panel, block_bars=1),
        replay(var_alone("rebalance"), panel),
    )


def test_the_var_stop_acts_between_rebalances_in_the_crash_and_cuts_onto_the_limit(runs):
    config, panel, run, _, weekly = runs
    stops = [a for a in run.alerts if a.kind == "var_stop"]
    when = np.array([np.datetime64(a.asof.replace(tzinfo=None), "ms") for a in stops])
    assert len(stops) >= 2 and in_crash(when, panel).all()
    for alert in stops:
        value, limit = alert.metrics["var"], alert.metrics["limit"]
        assert limit == config.risk.var_limit and value > limit * 1.1
        assert alert.action == f"exposure x{limit / value:.4g}"
    cuts = [t for t in run.targets if t.risk_actions == ("var_stop",)]
    assert [t.rebalance_id for t in cuts] == [a.rebalance_id for a in stops]
    cut_orders = [o for o in run.orders if o.rebalance_id.startswith("var-")]
    assert cut_orders and all(o.reduce_only and o.side == "sell" for o in cut_orders)
    assert run.summary["limits_acted"]["var_stop"] == len(stops)
    # Weekly checks alone never stop between rebalances.
    assert not [a for a in weekly.alerts if a.kind == "var_stop"]
    assert crash_returns(run, panel).min() > crash_returns(weekly, panel).min() + WORST_DAY_CUT


def test_blocks_of_quiet_bars_change_nothing(runs):
    _, _, run, by_bar, _ = runs
    assert np.array_equal(by_bar.close_time, run.close_time)
    assert np.array_equal(by_bar.equity, run.equity)
    assert by_bar.summary == run.summary
    assert by_bar.alerts == run.alerts and by_bar.orders == run.orders

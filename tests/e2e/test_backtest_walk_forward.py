"""A backtest with ``[model] walk_forward = true`` fits the model walk-forward on the run's own
snapshots and serves, at every period, the fit made before it: never a model that saw the
period. Before the first fit the trailing-IC fallback is served, flagged."""

from __future__ import annotations

import numpy as np

from engine.config import load_config
from engine.data.synthetic import synthetic_panel
from engine.events import Signal
from services.commands.backtest import Backtest
from strategies.models.dataset import utc64


def test_every_signal_comes_from_a_fit_made_before_it():
    config = load_config(
        None,
        {
            "DEEPFACTOR_STRATEGY__NAME": "lstm",
            "DEEPFACTOR_MODEL__WALK_FORWARD": "true",
            "DEEPFACTOR_MODEL__LOOKBACK": "5",
            "DEEPFACTOR_MODEL__HIDDEN": "8",
            "DEEPFACTOR_MODEL__EPOCHS": "2",
            "DEEPFACTOR_MODEL__MIN_TRAIN": "100",
            "DEEPFACTOR_MODEL__RETRAIN_EVERY": "60",
            "DEEPFACTOR_MODEL__DEVICE": "cpu",
            "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
            "DEEPFACTOR_LOG__LEVEL": "warning",
        },
    )
    backtest = Backtest(config, synthetic_panel(n_assets=10, n_bars=320, seed=11))
    summary = backtest.run()
    schedule = backtest.walk_forward.schedule["lstm"]
    starts = {model.version: start for start, model in schedule}
    assert len(starts) == len(backtest.walk_forward.windows) >= 3
    reader = backtest.bus.consumer("audit", "a", [Signal.TOPIC])
    signals = [d.event.payload for d in reader.read(100_000)]
    served = [s for s in signals if not s.fallback]
    assert served, "no signal came from a walk-forward fit"
    for signal in signals:
        at = utc64(signal.asof)
        if signal.fallback:
            assert at < schedule[0][0] or signal.model.startswith("trailing-ic")
            continue
        start = starts[signal.model]
        assert start <= at  # fitted on what was known at start: labels up to it
        later = [s for s, _ in schedule if s <= at]
        assert start == max(later)  # the latest fit available, not an older one
    # The first fit's training rows all end before it serves.
    first = backtest.walk_forward.windows[0]
    assert np.datetime64(first["train_end"]) < schedule[0][0]
    assert summary["model"] == schedule[-1][1].version

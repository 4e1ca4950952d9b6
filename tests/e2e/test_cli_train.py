"""``deepfactor train`` as a user runs it: walk-forward on a data file, a table of
out-of-sample IC per window next to the baselines, train.json, and a checkpoint that becomes
active and that ``deepfactor backtest --strategy lstm`` then serves (named in the summary).
A strategy whose registry has no model falls back to trailing-IC weights and says so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from engine.data import SAMPLE_PATH
from strategies.models.registry import ModelRegistry
from tests.cli_process import deepfactor as run_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "DEEPFACTOR_MODEL__EPOCHS": "3",
    "DEEPFACTOR_MODEL__HIDDEN": "8",
    "DEEPFACTOR_MODEL__LOOKBACK": "5",
    "DEEPFACTOR_MODEL__MIN_TRAIN": "150",
    "DEEPFACTOR_MODEL__RETRAIN_EVERY": "100",
    "DEEPFACTOR_MODEL__DEVICE": "cpu",
    "DEEPFACTOR_LOG__LEVEL": "warning",
}


def deepfactor(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(*arguments, env={**os.environ, **env})


def test_train_then_backtest_serves_the_checkpoint(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    result = deepfactor(
        "train", "--data", str(SAMPLE_PATH), "--bars", "420", "--out", str(tmp_path / "train"),
        "--registry", str(registry), "--baselines", "trailing-ic,equal-weight", "--no-progress",
        env=SMALL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "train" / "train.json").read_text())
    # Cutoffs at 150 and 250 and 350 (retrain every 100) up to the last labelled period.
    assert [w["window"] for w in report["windows"]] == [1, 2, 3]
    for window in report["windows"]:
        assert window["train_samples"] > 0
        assert window["train_end"] < window["test_start"]  # nothing after the decision date
        assert {"lstm", "trailing-ic", "equal-weight"} <= set(window)
    assert set(report["out_of_sample"]) == {"lstm", "trailing-ic", "equal-weight"}
    assert "mean IC" in result.stdout and report["version"] in result.stdout
    store = ModelRegistry(registry)
    assert store.active("lstm") == report["version"] and report["activated"]
    meta = store.meta("lstm", report["version"])
    assert meta["factors"] == report["factors"] and meta["training"]["samples"] > 0

    out = tmp_path / "backtest"
    backtest = deepfactor(
        "backtest", "--data", str(SAMPLE_PATH), "--out", str(out), "--strategy", "lstm",
        "--registry", str(registry), env=SMALL,
    )  # fmt: skip
    assert backtest.returncode == 0, backtest.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == report["version"]
    assert summary["orders"] > 0


def test_a_strategy_without_a_model_falls_back_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "backtest"
    result = deepfactor(
        "backtest", "--data", str(SAMPLE_PATH), "--out", str(out), "--strategy", "lstm",
        "--registry", str(tmp_path / "none"), env={**SMALL, "DEEPFACTOR_LOG__FORMAT": "json"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].startswith("trailing-ic") and summary["signal_fallbacks"] > 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    fallbacks = [line for line in lines if line["event"] == "signal.fallback"]
    assert fallbacks and "no active model of strategy lstm" in fallbacks[0]["reason"]


def test_train_refuses_what_it_cannot_train(tmp_path: Path) -> None:
    result = deepfactor(
        "train", "--out", str(tmp_path / "t"), "--model", "lstm", "--baselines", "magic",
        "--bars", "300", env=SMALL,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--baselines: unknown models ['magic']" in result.stderr

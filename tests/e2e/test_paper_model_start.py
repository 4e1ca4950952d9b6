"""``deepfactor paper`` with a model strategy and no active checkpoint trains one at start on
the bars before ``[paper] start`` (never on a bar of its replay), serves it, and names it in
the summary; continuing the account serves the same checkpoint without training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from strategies.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]


def test_paper_trains_its_model_on_the_history_before_its_start(short_tmp: Path) -> None:
    out = short_tmp / "run"
    registry = short_tmp / "models"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")},
        "DEEPFACTOR_STRATEGY__NAME": "lstm",
        "DEEPFACTOR_MODEL__REGISTRY": str(registry),
        "DEEPFACTOR_MODEL__LOOKBACK": "5",
        "DEEPFACTOR_MODEL__HIDDEN": "8",
        "DEEPFACTOR_MODEL__EPOCHS": "3",
        "DEEPFACTOR_MODEL__DEVICE": "cpu",
        "DEEPFACTOR_PAPER__START": "2016-01-04",
        "DEEPFACTOR_LOG__FORMAT": "json",
        "DEEPFACTOR_LOG__LEVEL": "info",
    }
    # 100 bars: the factors warm up on the replay's first ~63 (the fallback serves then).
    command = [sys.executable, "-m", "services.commands.cli", "paper", "--bars", "100",
               "--speed", "max", "--out", str(out)]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [json.loads(x) for x in first.stderr.splitlines() if x.startswith("{")]
    trained = next(line for line in lines if line["event"] == "paper.model_trained")
    version = ModelRegistry(registry).active("lstm")
    assert trained["version"] == version
    assert trained["trained_until"] < "2016-01-04"  # history only: before the replay's start
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start"] >= "2016-01-04" and summary["bars"] == 100
    assert summary["model"] == version

    again = subprocess.run(
        [*command[:-6], "--bars", "120", *command[-4:]], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    events = [json.loads(x)["event"] for x in again.stderr.splitlines() if x.startswith("{")]
    assert "paper.model_active" in events and "paper.model_trained" not in events
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bars"] == 120 and summary["model"] == version and summary["restarts"] == 1

"""The retraining worker beside a running paper account: ``deepfactor retrain`` fits a model
outside the serving path, activates it (the account had none, so its signal service was
serving the trailing-IC fallback), and tells the account's signal service to reload; the
signals from then on name the new version, and so does the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from strategies.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]


def test_a_retrained_model_is_served_by_the_running_account(short_tmp: Path) -> None:
    out = short_tmp / "run"  # short: the embedded server's socket lives under it
    registry = short_tmp / "models"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")},
        "DEEPFACTOR_STRATEGY__NAME": "lstm",
        "DEEPFACTOR_MODEL__REGISTRY": str(registry),
        "DEEPFACTOR_MODEL__LOOKBACK": "5",
        "DEEPFACTOR_MODEL__HIDDEN": "8",
        "DEEPFACTOR_MODEL__EPOCHS": "3",
        "DEEPFACTOR_MODEL__DEVICE": "cpu",
        "DEEPFACTOR_MARKET__SYMBOLS": "8",
        "DEEPFACTOR_BUS__BLOCK_MS": "50",
        "DEEPFACTOR_LOG__LEVEL": "info",
        "DEEPFACTOR_LOG__FORMAT": "json",
    }
    paper = subprocess.Popen(
        [sys.executable, "-m", "services.commands.cli", "paper", "--synthetic", "--bars", "400",
         "--speed", "40", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "account.json").exists() or not (out / "redis" / "redis.sock").exists():
            assert paper.poll() is None and time.monotonic() < deadline, "paper did not start"
            time.sleep(0.05)
        retrain = subprocess.run(
            [sys.executable, "-m", "services.commands.cli", "retrain", "--once", "--synthetic",
             "--bars", "300", "--out", str(out), "--redis-url",
             f"unix://{out}/redis/redis.sock"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert retrain.returncode == 0, retrain.stderr[-3000:]
        _, stderr = paper.communicate(timeout=120)
    finally:
        if paper.poll() is None:
            paper.kill()
            paper.wait()
    assert paper.returncode == 0, stderr[-3000:]
    version = ModelRegistry(registry).active("lstm")
    assert version is not None and version in retrain.stdout and "active" in retrain.stdout
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    # Served the fallback first (no model), then reloaded, then the new version.
    first_fallback = events.index("signal.fallback")
    reloaded = next(i for i, line in enumerate(lines) if line["event"] == "signal.reloaded")
    assert first_fallback < reloaded and lines[reloaded]["model"] == version
    served = [
        line["model"]
        for line in lines[reloaded:]
        if line["event"] == "rebalance.completed" and line["kind"] == "scheduled"
    ]
    assert served and served[-1] == version
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == version and summary["signal_fallbacks"] > 0

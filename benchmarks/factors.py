"""Factor library speed: every registered factor over a synthetic market, on both paths.

- Full history: ``compute_panel`` of every registered factor with its default parameters over
  ``--assets`` x ``--bars`` (seeded ``synthetic_panel``, with volume); best of ``--repeat``.
- Incremental: ``IncrementalFactors.update`` for the same factors, one bar for all assets,
  after a warm-up long enough to fill every window and cross a block boundary of the longest
  one; the median of ``--steps`` consecutive steps, in milliseconds (p95 and max reported too:
  a step that completes a block of a long window refreshes that window's suffix sums).

Before timing, the incremental exposures at the last step are checked against the full panel.
Targets (the issue's): full set for 500 x 2,000 under 1 s; one step under 2 ms. Writes
benchmarks/results/factors.json with ``full_500x2000_s`` and ``incremental_step_ms`` (the keys
follow --assets / --bars).

    python benchmarks/factors.py [--assets 500] [--bars 2000] [--repeat 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.data import synthetic_panel  # noqa: E402
from strategies.factors import FACTORS, FactorInputs, IncrementalFactors, compute_panel  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "factors.json"
FULL_TARGET_S, STEP_TARGET_MS = 1.0, 2.0


def time_full(requests, inputs: FactorInputs, repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        compute_panel(requests, inputs)
        runs.append(time.perf_counter() - started)
    return runs


def time_incremental(requests, panel, warmup: int, steps: int) -> tuple[list[float], np.ndarray]:
    incremental = IncrementalFactors(requests)
    symbols = panel.symbols
    for t in range(warmup):
        incremental.update(
            symbols, panel.open[t], panel.high[t], panel.low[t], panel.close[t], panel.volume[t]
        )
    gc.collect()
    durations = []
    exposures = np.empty(0)
    for t in range(warmup, warmup + steps):
        bar = (panel.open[t], panel.high[t], panel.low[t], panel.close[t], panel.volume[t])
        started = time.perf_counter()
        exposures = incremental.update(symbols, *bar)
        durations.append(time.perf_counter() - started)
    return durations, exposures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=500)
    parser.add_argument("--bars", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    panel = synthetic_panel(args.assets, args.bars, seed=7)
    inputs = FactorInputs.from_panel(panel)
    requests = [(name, name, {}) for name in FACTORS]
    longest = max(spec.window() for spec in FACTORS.values())
    warmup = 2 * longest  # every window full, and the longest has completed a block
    if warmup + args.steps > args.bars:
        parser.error(
            f"--bars must be at least {warmup + args.steps} for {args.steps} steps "
            f"after a warm-up of {warmup} bars"
        )

    full_runs = time_full(requests, inputs, args.repeat)
    durations, exposures = time_incremental(requests, panel, warmup, args.steps)

    # The incremental exposures at the last timed bar equal the full panel's row.
    last = warmup + args.steps - 1
    full = compute_panel(requests, inputs)
    for row, (label, _, _) in enumerate(requests):
        np.testing.assert_allclose(exposures[row], full[label][last], rtol=1e-9)

    per_factor = {}
    for request in requests:
        started = time.perf_counter()
        compute_panel([request], inputs)
        per_factor[request[0]] = round(time.perf_counter() - started, 4)

    steps_ms = sorted(d * 1e3 for d in durations)
    full_s = min(full_runs)
    step_ms = statistics.median(steps_ms)
    document = {
        f"full_{args.assets}x{args.bars}_s": round(full_s, 4),
        "incremental_step_ms": round(step_ms, 4),
        "incremental_step_p95_ms": round(steps_ms[int(0.95 * (len(steps_ms) - 1))], 4),
        "incremental_step_max_ms": round(steps_ms[-1], 4),
        "incremental_step_mean_ms": round(statistics.fmean(steps_ms), 4),
        "full_runs_s": [round(r, 4) for r in full_runs],
        "full_alone_per_factor_s": per_factor,
        "targets": {"full_s": FULL_TARGET_S, "incremental_step_ms": STEP_TARGET_MS},
        "n_factors": len(requests),
        "factors": [name for _, name, _ in requests],
        "assets": args.assets,
        "bars": args.bars,
        "repeat": args.repeat,
        "steps": args.steps,
        "warmup_bars": warmup,
        "data": "engine.data.synthetic_panel(assets, bars, seed=7), with volume",
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python "
        f"{platform.python_version()}, numpy {np.__version__}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")

    print(f"{len(requests)} factors, {args.assets} assets x {args.bars} bars")
    print(f"full history   best of {args.repeat}: {full_s:8.3f} s    (target < {FULL_TARGET_S} s)")
    print(
        f"one bar, all factors, median of {args.steps}: {step_ms:8.3f} ms   "
        f"(p95 {document['incremental_step_p95_ms']} ms, max "
        f"{document['incremental_step_max_ms']} ms; target < {STEP_TARGET_MS} ms)"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

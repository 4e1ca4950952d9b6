"""Signal model speed: LSTM training throughput against a bare PyTorch loop, and serving latency.

Data: the planted-regime market of ``strategies.models.synthetic`` (``planted_regime_market``)
over the 18 live factor names of ``strategies.factors.FACTORS``:
"momentum" pays in the calm regime, "low_volatility" in the volatile one, the other 16 never.
Features are K = 2 x 18 + 5 = 41 columns.

- Training, ours: ``training.fit("lstm", data, rows, TrainSettings(...))`` with a fixed number of
  epochs and early stopping off (patience = epochs), rows = every labelled period (``fit`` drops
  the warm-up rows and splits off the validation rows). samples/s = train samples x epochs /
  wall time of the whole ``fit`` call: tensor building, a validation pass per epoch and the
  best-state copies included. The same figure without validation is measured without touching
  the code: during the timed fits ``torch.inference_mode`` (which only the validation block of
  ``_fit_network`` enters) is wrapped by a timer, and the time spent inside it is subtracted.
- Training, bare: a plain PyTorch loop written here: the same ``FactorWeightLSTM`` (same sizes,
  same seed, so the same initial weights), AdamW with the same settings, the same batches (same
  permutation generator and seed, the same train rows as pre-built tensors), the same loss
  (``ic_loss`` on ``composite(factor_weights(...))`` + the gate penalty); no validation, no early
  stopping, no per-batch loss read-back. Before timing, a short bare run that does track the
  loss is checked to reproduce the per-epoch training losses of our fit (same computation).
- Ratio = ours / bare (samples/s), target >= 0.8. Each timing is the best of ``--repeat`` runs,
  after an untimed warm-up fit that pays torch's one-time costs (importing torch._dynamo on the
  first optimiser, first-kernel set-up), reported alone as ``cold_first_fit_s``.
- Inference: ``FactorLSTMModel.predict`` (the model of the fastest timed fit: every timed fit
  is the same, seeded) end to end on a (lookback, K) raw feature window and (lookback, 18, N)
  exposures for N = 20, 100, 500 (the exposures of a 500-asset planted market, the first N
  assets); and ``AssetLSTMModel.predict`` (a freshly initialised network, seeded) on the same
  inputs. ``--calls`` timed calls after
  ``--warmup`` untimed ones, p50 and p99 in ms; repeated ``--repeat`` times, the round with the
  best p50 kept (all rounds' p50 are in the JSON). Target: 500 assets p50 < 15 ms on CPU.

Torch's intra-op thread count is fixed for every timing (``--threads``, default 1) and printed.
One thread because these networks are tiny (a 64 x 20 x 41 batch, hidden 32): torch's thread
pool only adds synchronisation, and on a two-core machine that other processes also load, its
default (one thread per core) made each fit and predict many times slower and erratic (see
tests/unit/strategies/models/conftest.py). The 500-asset predict is also timed briefly at torch's
default count (``inference_500_at_torch_default_threads``): what a process that leaves the
count alone, as the signal service and ``deepfactor train`` do, gets here. Timings are also taken
on process CPU time (``train_ratio_cpu_time``), which other processes disturb far less than wall
time; the 1-minute load average at the start and end is recorded.

Writes benchmarks/results/model.json (``--out``; a ``--quick`` run writes only with ``--out``).

    python benchmarks/model.py [--device cpu|cuda|auto] [--quick] [--out PATH] [--assets 100]
        [--periods 600] [--epochs 20] [--batch-size 64] [--repeat 3] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from strategies.factors import FACTORS as LIVE_FACTORS  # noqa: E402
from strategies.models import synthetic, training  # noqa: E402
from strategies.models.base import ModelError  # noqa: E402
from strategies.models.dataset import Normaliser, PeriodData, rank_labels, windows  # noqa: E402
from strategies.models.models import AssetLSTMModel, FactorLSTMModel, resolve_device  # noqa: E402
from strategies.models.networks import (  # noqa: E402
    AssetLSTM,
    FactorWeightLSTM,
    composite,
    factor_weights,
    ic_loss,
)

RESULTS = ROOT / "benchmarks" / "results" / "model.json"
RATIO_TARGET, INFERENCE_500_TARGET_MS = 0.8, 15.0
SIZES = (20, 100, 500)


# --------------------------------------------------------------------------------------- data


def planted_market(
    periods: int,
    assets: int,
    factors: tuple[str, ...],
    paying: tuple[int, int],
    seed: int = 0,
) -> PeriodData:
    """``synthetic.planted_regime_market`` over the live factor names."""
    return synthetic.planted_regime_market(
        periods=periods, assets=assets, seed=seed, factors=factors, paying_factors=paying
    ).data


def live_market(periods: int, assets: int, seed: int) -> PeriodData:
    names = tuple(LIVE_FACTORS)
    paying = (names.index("momentum"), names.index("low_volatility"))
    return planted_market(periods, assets, names, paying, seed=seed)


# ------------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values_ms: np.ndarray, q: float) -> float:
    return float(np.percentile(values_ms, q))


@contextmanager
def timed_inference_mode(device: torch.device):
    """While active, ``torch.inference_mode`` blocks are timed; yields a one-item list that
    holds the seconds spent inside them. In ``_fit_network`` only the per-epoch validation
    pass enters one."""
    original = torch.inference_mode
    spent = [0.0, 0.0]  # wall, process CPU

    class Timed:
        def __init__(self, *args, **kwargs):
            self._inner = original(*args, **kwargs)

        def __enter__(self):
            self._started = time.perf_counter(), time.process_time()
            return self._inner.__enter__()

        def __exit__(self, *exc):
            result = self._inner.__exit__(*exc)
            sync(device)
            spent[0] += time.perf_counter() - self._started[0]
            spent[1] += time.process_time() - self._started[1]
            return result

    torch.inference_mode = Timed  # type: ignore[misc,assignment]
    try:
        yield spent
    finally:
        torch.inference_mode = original  # type: ignore[misc]


def settings_for(args: argparse.Namespace, epochs: int) -> training.TrainSettings:
    return training.TrainSettings(
        lookback=args.lookback,
        hidden=args.hidden,
        epochs=epochs,
        patience=epochs,  # waited never reaches it: no early stop
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )


# ------------------------------------------------------------------------------------ ours


def time_ours(
    data: PeriodData, rows: np.ndarray, settings: training.TrainSettings, device: torch.device
) -> dict[str, Any]:
    gc.collect()
    with timed_inference_mode(device) as validation:
        sync(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        model, report = training.fit("lstm", data, rows, settings)
        sync(device)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    samples = report.train_rows * report.epochs
    loop = samples / report.samples_per_s  # fit's own clock: the epoch loop alone
    return {
        "model": model,
        "report": report,
        "samples": samples,
        "wall_s": wall,
        "loop_s": loop,
        "validation_s": validation[0],
        "setup_s": wall - loop,
        "cpu_s": cpu,
        "validation_cpu_s": validation[1],
    }


# ------------------------------------------------------------------------------------ bare


class BareTensors:
    """The train rows' inputs, built once with numpy (independently of ``_Tensors``)."""

    def __init__(self, data: PeriodData, train: np.ndarray, lookback: int, device: torch.device):
        normaliser = Normaliser.fit(data.features[train])
        features = normaliser.apply(data.features)
        self.x = torch.from_numpy(windows(features, train, lookback)).to(device)
        self.exposures = torch.from_numpy(np.nan_to_num(data.exposures[train], nan=0.0)).to(device)
        valid = np.isfinite(data.exposures[train]).all(axis=1) & np.isfinite(data.returns[train])
        self.mask = torch.from_numpy(valid).to(device)
        self.labels = torch.from_numpy(np.nan_to_num(rank_labels(data.returns[train]))).to(device)
        self.n = len(train)


def bare_fit(
    tensors: BareTensors,
    n_features: int,
    n_factors: int,
    settings: training.TrainSettings,
    device: torch.device,
    epochs: int,
    track: bool = False,
) -> tuple[tuple[float, float], list[float]]:
    """A plain training loop; returns ((wall s, process CPU s), per-epoch mean loss if
    ``track``)."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    network = FactorWeightLSTM(n_features, n_factors, settings.hidden, settings.layers).to(device)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    network.train()
    losses: list[float] = []
    gc.collect()
    sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        order = torch.randperm(tensors.n, generator=generator).to(device)
        total = 0.0
        for start in range(0, tensors.n, settings.batch_size):
            batch = order[start : start + settings.batch_size]
            direction, gate = network(tensors.x[batch])
            scores = composite(factor_weights(direction, gate), tensors.exposures[batch])
            loss = ic_loss(scores, tensors.labels[batch], tensors.mask[batch])
            loss = loss + settings.gate_penalty * gate.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if track:
                total += float(loss.detach()) * len(batch)
        if track:
            losses.append(total / tensors.n)
    sync(device)
    return (time.perf_counter() - started, time.process_time() - cpu_started), losses


# ------------------------------------------------------------------------------- inference


def time_predict(model, features: np.ndarray, exposures: np.ndarray, calls: int, warmup: int):
    for _ in range(warmup):
        model.predict(features, exposures)
    gc.collect()
    durations = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        model.predict(features, exposures)
        durations[i] = time.perf_counter() - started
    return durations * 1e3


def best_round(model, features, exposures, calls: int, warmup: int, repeat: int) -> dict:
    rounds = [time_predict(model, features, exposures, calls, warmup) for _ in range(repeat)]
    best = min(rounds, key=lambda r: percentile(r, 50))
    return {
        "p50_ms": percentile(best, 50),
        "p99_ms": percentile(best, 99),
        "mean_ms": float(best.mean()),
        "rounds_p50_ms": [round(percentile(r, 50), 4) for r in rounds],
    }


# ------------------------------------------------------------------------------------ main


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes)")
    parser.add_argument("--out", type=Path, help=f"JSON path (default {RESULTS.name})")
    parser.add_argument("--assets", type=int, help="assets of the training market (100)")
    parser.add_argument("--periods", type=int, help="periods of the training market (600)")
    parser.add_argument("--epochs", type=int, help="epochs per timed fit (20)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lookback", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeat", type=int, help="runs per timing, the best kept (3)")
    parser.add_argument("--calls", type=int, help="timed predict calls per round (1000)")
    parser.add_argument("--warmup", type=int, help="untimed predict calls first (50)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads for every timing (1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile one fit of ours")
    args = parser.parse_args()
    full = {"assets": 100, "periods": 600, "epochs": 20, "repeat": 3, "calls": 1000, "warmup": 50}
    quick = {"assets": 30, "periods": 160, "epochs": 2, "repeat": 1, "calls": 30, "warmup": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()

    data = live_market(args.periods, args.assets, args.seed)
    n_factors, n_features = len(data.factors), data.features.shape[1]
    settings = settings_for(args, args.epochs)
    rows = np.arange(data.n_periods - 1)  # every labelled period; fit drops the warm-up rows

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} intra-op threads "
        f"(interop {torch.get_num_interop_threads()}; torch's own default here "
        f"{default_threads}), {os.cpu_count()} cpu"
    )
    print(
        f"training market: {args.periods} periods x {args.assets} assets, {n_factors} factors, "
        f"{n_features} features; lookback {args.lookback}, hidden {args.hidden}, batch "
        f"{args.batch_size}, {args.epochs} epochs, best of {args.repeat}"
    )

    # One-time torch costs (torch._dynamo import by the first optimiser, kernel set-up).
    started = time.perf_counter()
    training.fit("lstm", data, rows, settings_for(args, 1))
    cold = time.perf_counter() - started

    # The same train rows as fit's (its row filter, then its split).
    usable = rows[rows >= args.lookback - 1]
    scorable = np.isfinite(data.exposures[usable]).all(axis=1) & np.isfinite(data.returns[usable])
    usable = usable[scorable.sum(axis=1) >= training.MIN_ASSETS]
    train, _ = training._split(usable, settings.validation_fraction)
    bare_tensors = BareTensors(data, train, args.lookback, device)

    # Same computation: the bare loop's per-epoch losses equal our fit's.
    check_epochs = min(2, args.epochs)
    _, bare_losses = bare_fit(
        bare_tensors, n_features, n_factors, settings, device, check_epochs, track=True
    )

    ours_runs, bare_runs = [], []
    for _ in range(args.repeat):  # interleaved: drift in machine load hits both alike
        ours_runs.append(time_ours(data, rows, settings, device))
        bare_runs.append(
            bare_fit(bare_tensors, n_features, n_factors, settings, device, args.epochs)[0]
        )
    ours = min(ours_runs, key=lambda r: r["wall_s"])
    ours_cpu = min(ours_runs, key=lambda r: r["cpu_s"])
    report = ours["report"]
    assert report.train_rows == len(train) and report.epochs == args.epochs
    ours_losses = [row["loss"] for row in report.history[:check_epochs]]
    np.testing.assert_allclose(bare_losses, ours_losses, rtol=1e-4, atol=1e-6)

    samples = ours["samples"]
    bare_s = min(wall for wall, _ in bare_runs)
    bare_cpu_s = min(cpu for _, cpu in bare_runs)
    ratio_cpu = bare_cpu_s / ours_cpu["cpu_s"]
    ratio_cpu_excl_validation = bare_cpu_s / (ours_cpu["cpu_s"] - ours_cpu["validation_cpu_s"])
    # Each ours run against the bare run right after it: less at the mercy of one lucky run.
    paired_wall = float(np.median([b[0] / o["wall_s"] for o, b in zip(ours_runs, bare_runs)]))
    paired_cpu = float(np.median([b[1] / o["cpu_s"] for o, b in zip(ours_runs, bare_runs)]))
    ours_sps = samples / ours["wall_s"]
    ours_excl_validation_sps = samples / (ours["wall_s"] - ours["validation_s"])
    ours_loop_sps = samples / (ours["loop_s"] - ours["validation_s"])
    bare_sps = samples / bare_s
    ratio = ours_sps / bare_sps

    # Inference.
    infer = live_market(args.lookback + 10, max(SIZES), args.seed + 1)
    window = slice(infer.n_periods - args.lookback, infer.n_periods)
    features = infer.features[window]
    torch.manual_seed(args.seed)
    asset_model = AssetLSTMModel(
        data.factors, args.lookback, AssetLSTM(n_factors, args.hidden), device
    )
    factor_model: FactorLSTMModel = ours["model"]
    inference: dict[str, dict] = {}
    for n in SIZES:
        exposures = np.ascontiguousarray(infer.exposures[window][:, :, :n])
        inference[f"lstm_{n}"] = best_round(
            factor_model, features, exposures, args.calls, args.warmup, args.repeat
        )
        inference[f"asset_{n}"] = best_round(
            asset_model, features, exposures, args.calls, args.warmup, args.repeat
        )
    # What a process that leaves torch's thread count alone (the signal service, `deepfactor
    # train`) gets: the 500-asset predict at torch's default, a short round.
    default_threads_500 = None
    if device.type == "cpu" and default_threads != args.threads:
        torch.set_num_threads(default_threads)
        exposures = np.ascontiguousarray(infer.exposures[window])
        durations = time_predict(
            factor_model, features, exposures, max(args.calls // 10, 10), args.warmup // 5
        )
        default_threads_500 = {
            "threads": default_threads,
            "p50_ms": round(percentile(durations, 50), 4),
            "p99_ms": round(percentile(durations, 99), 4),
            "calls": len(durations),
        }
        torch.set_num_threads(args.threads)

    on_cpu = device.type == "cpu"
    p50_500 = inference["lstm_500"]["p50_ms"]
    passed = {
        "train_ratio": ratio >= RATIO_TARGET,
        "inference_500_p50": p50_500 < INFERENCE_500_TARGET_MS if on_cpu else None,
    }
    document: dict[str, Any] = {
        "train_ratio_vs_bare_torch": round(ratio, 4),
    }
    for n in SIZES:
        document[f"inference_{n}_p50_ms"] = round(inference[f"lstm_{n}"]["p50_ms"], 4)
        document[f"inference_{n}_p99_ms"] = round(inference[f"lstm_{n}"]["p99_ms"], 4)
    for n in SIZES:
        document[f"asset_inference_{n}_p50_ms"] = round(inference[f"asset_{n}"]["p50_ms"], 4)
        document[f"asset_inference_{n}_p99_ms"] = round(inference[f"asset_{n}"]["p99_ms"], 4)
    document.update(
        {
            "train_samples_per_s_ours": round(ours_sps, 1),
            "train_samples_per_s_bare": round(bare_sps, 1),
            "train_samples_per_s_ours_excl_validation": round(ours_excl_validation_sps, 1),
            "train_ratio_excl_validation": round(ours_excl_validation_sps / bare_sps, 4),
            "train_samples_per_s_ours_loop_only": round(ours_loop_sps, 1),
            "train_samples_per_s_fit_report": round(report.samples_per_s, 1),
            "train_ratio_cpu_time": round(ratio_cpu, 4),
            "train_ratio_paired_median": round(paired_wall, 4),
            "train_ratio_paired_median_cpu_time": round(paired_cpu, 4),
            "train_ratio_cpu_time_excl_validation": round(ratio_cpu_excl_validation, 4),
            "train_breakdown_s": {
                "fit_wall": round(ours["wall_s"], 4),
                "setup": round(ours["setup_s"], 4),
                "validation": round(ours["validation_s"], 4),
                "train_epochs": round(ours["loop_s"] - ours["validation_s"], 4),
                "bare_wall": round(bare_s, 4),
                "fit_cpu": round(ours_cpu["cpu_s"], 4),
                "validation_cpu": round(ours_cpu["validation_cpu_s"], 4),
                "bare_cpu": round(bare_cpu_s, 4),
            },
            "train_runs_s": {
                "ours_wall": [round(r["wall_s"], 4) for r in ours_runs],
                "bare_wall": [round(wall, 4) for wall, _ in bare_runs],
                "ours_cpu": [round(r["cpu_s"], 4) for r in ours_runs],
                "bare_cpu": [round(cpu, 4) for _, cpu in bare_runs],
            },
            "cold_first_fit_s": round(cold, 3),
            "inference_500_at_torch_default_threads": default_threads_500,
            "inference_details": {
                k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                for k, v in inference.items()
            },
            "targets": {
                "train_ratio_vs_bare_torch": f">= {RATIO_TARGET}",
                "inference_500_p50_ms": f"< {INFERENCE_500_TARGET_MS} (CPU)",
            },
            "passed": passed,
            "settings": {
                "assets": args.assets,
                "periods": args.periods,
                "factors": n_factors,
                "features": n_features,
                "lookback": args.lookback,
                "hidden": args.hidden,
                "layers": settings.layers,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "patience": settings.patience,
                "learning_rate": settings.learning_rate,
                "train_samples": report.train_rows,
                "validation_samples": report.validation_rows,
                "repeat": args.repeat,
                "inference_calls": args.calls,
                "inference_warmup": args.warmup,
                "inference_sizes": list(SIZES),
                "seed": args.seed,
                "quick": args.quick,
            },
            "method": (
                "ours: training.fit wall time (setup, per-epoch validation and best-state copies "
                "included); excl_validation subtracts the time inside torch.inference_mode "
                "(only the validation pass enters it); loop_only uses FitReport.samples_per_s's "
                "own clock minus validation; bare: plain loop on pre-built tensors, same "
                "network/seed/batches/loss/optimiser, no validation; best of repeat, interleaved; "
                "*_cpu_time ratios: the same runs on process CPU time (time.process_time); "
                "paired_median: the median over runs of bare/ours for each ours run and the bare "
                "run timed right after it; "
                "inference: predict end to end, best-p50 round of repeat"
            ),
            "data": (
                "planted_regime_market recipe over the 18 live factor names (momentum pays calm, "
                "low_volatility volatile), seed; inference exposures: a 500-asset market, "
                "first N assets, no missing values"
            ),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
            "torch_default_threads": default_threads,
            "interop_threads": torch.get_num_interop_threads(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "machine": {
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            "load_average_1m": {
                "start": round(load_before[0], 2),
                "end": round(os.getloadavg()[0], 2),
            },
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )

    def verdict(ok: bool | None) -> str:
        return "n/a (not CPU)" if ok is None else ("PASS" if ok else "FAIL")

    train_epochs_s = ours["loop_s"] - ours["validation_s"]
    if max(load_before[0], os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1):
        print(
            f"WARNING: 1-min load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} "
            f"now on {os.cpu_count()} cpu: other processes compete, timings are not clean"
        )
    print(f"cold first fit (1 epoch, one-time torch costs): {cold:.2f} s")
    print(
        f"same computation: bare per-epoch losses {np.round(bare_losses, 6).tolist()} "
        f"== ours {np.round(ours_losses, 6).tolist()}"
    )
    print(
        f"training, {report.train_rows} train samples x {args.epochs} epochs, best of "
        f"{args.repeat}:"
    )
    print(
        f"  ours  {ours_sps:9.1f} samples/s  (fit {ours['wall_s']:.3f} s = setup "
        f"{ours['setup_s']:.3f} + train epochs {train_epochs_s:.3f} + validation "
        f"{ours['validation_s']:.3f})"
    )
    print(
        f"  ours excluding validation {ours_excl_validation_sps:9.1f} samples/s; epoch loop "
        f"without validation {ours_loop_sps:9.1f}; FitReport {report.samples_per_s:9.1f}"
    )
    print(f"  bare  {bare_sps:9.1f} samples/s  ({bare_s:.3f} s)")
    print(
        f"  ratio ours/bare {ratio:.3f} (target >= {RATIO_TARGET}): "
        f"{verdict(passed['train_ratio'])}; excluding validation "
        f"{ours_excl_validation_sps / bare_sps:.3f}"
    )
    print(
        f"  on process CPU time (robust to other processes at 1 thread): ratio {ratio_cpu:.3f}, "
        f"excluding validation {ratio_cpu_excl_validation:.3f} (ours {ours_cpu['cpu_s']:.3f} s "
        f"of which validation {ours_cpu['validation_cpu_s']:.3f}, bare {bare_cpu_s:.3f} s)"
    )
    print(
        f"  median over the {args.repeat} (ours, bare) pairs of their ratio: wall "
        f"{paired_wall:.3f},"
        f" CPU time {paired_cpu:.3f}"
    )
    print(
        f"inference, {args.calls} calls after {args.warmup} warm-up, best-p50 round of "
        f"{args.repeat}:"
    )
    for n in SIZES:
        lstm, asset = inference[f"lstm_{n}"], inference[f"asset_{n}"]
        print(
            f"  {n:4d} assets  lstm p50 {lstm['p50_ms']:7.3f} ms  p99 {lstm['p99_ms']:7.3f} ms"
            f"    asset-lstm p50 {asset['p50_ms']:7.3f} ms  p99 {asset['p99_ms']:7.3f} ms"
        )
    print(
        f"  500 assets lstm p50 {p50_500:.3f} ms (target < {INFERENCE_500_TARGET_MS} ms on CPU): "
        f"{verdict(passed['inference_500_p50'])}"
    )
    if default_threads_500 is not None:
        print(
            f"  500 assets lstm at torch's default {default_threads} threads ({len(durations)} "
            f"calls): p50 {default_threads_500['p50_ms']:.3f} ms, p99 "
            f"{default_threads_500['p99_ms']:.3f} ms"
        )

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        training.fit("lstm", data, rows, settings)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())

    out = args.out or (None if args.quick else RESULTS)
    if out is None:
        print("quick run: nothing written (pass --out to keep it)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

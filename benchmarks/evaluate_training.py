"""The fit phase of ``deepfactor evaluate``'s grid on the CPU and on a CUDA GPU.

``evaluate`` spends most of its time fitting the two LSTMs on every walk-forward window, for
every seed, before it replays the strategies. This script times exactly those fits
(``strategies.models.training.fit`` on the windows of ``walk_forward_windows``), one device at
a time, so the choice of ``evaluate --device`` rests on a measurement:

    # here: the models' training data of a file, as evaluate computes it
    python benchmarks/evaluate_training.py prepare \\
        --data engine/data/sample/us_stocks_1d_2014-2024.csv.gz \\
        --config deploy/configs/evaluate.toml --out benchmarks/results/period_data.npz
    # anywhere with torch (a GPU machine needs only torch, numpy, pandas, scikit-learn,
    # structlog and msgspec): the fits on each device
    python benchmarks/evaluate_training.py run --periods benchmarks/results/period_data.npz \\
        --devices cpu,cuda --seeds 3

``run`` writes benchmarks/results/evaluate_training.json: per device the seconds of all fits
(``fit_seconds_<device>``), fits per second, the CPU threads used, and the mean out-of-sample
rank IC of the fitted models (a check that both devices learn the same thing; the numbers are
not bit-identical across devices). ``cpu`` runs on one thread, as each task of evaluate's grid
does; ``cpu-all`` on every core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "evaluate_training.json"
KINDS = ("lstm", "asset-lstm")


def prepare(data: Path, config_path: Path | None, out: Path) -> None:
    from engine.config import load_config
    from engine.data.sources import FileSource
    from services.commands.model_data import period_data
    from services.commands.train import settings_of

    config = load_config(str(config_path) if config_path else None)
    panel = FileSource(data).panel()
    periods = period_data(config, panel)
    settings = settings_of(config, "cpu")
    np.savez_compressed(
        out,
        times=periods.times.astype("datetime64[ns]").astype(np.int64),
        label_times=periods.label_times.astype("datetime64[ns]").astype(np.int64),
        symbols=np.array(periods.symbols),
        factors=np.array(periods.factors),
        features=periods.features,
        exposures=periods.exposures,
        returns=periods.returns,
        settings=json.dumps(dataclasses.asdict(settings)),
        source=Path(panel.source).name,
    )
    print(f"wrote {out}: {periods.n_periods} periods x {len(periods.symbols)} assets")


def _load(path: Path):
    from strategies.models.dataset import PeriodData
    from strategies.models.training import TrainSettings

    stored = np.load(path, allow_pickle=False)
    data = PeriodData(
        times=stored["times"].astype("datetime64[ns]"),
        label_times=stored["label_times"].astype("datetime64[ns]"),
        symbols=tuple(str(s) for s in stored["symbols"]),
        factors=tuple(str(f) for f in stored["factors"]),
        features=stored["features"],
        exposures=stored["exposures"],
        returns=stored["returns"],
    )
    fields = json.loads(str(stored["settings"]))
    fields["factor_weights"] = tuple(tuple(pair) for pair in fields["factor_weights"])
    return data, TrainSettings(**fields), str(stored["source"])


def run(periods: Path, devices: list[str], seeds: int, out: Path) -> dict:
    import torch

    from strategies.models.training import fit, score_rows, walk_forward_windows

    data, base, source = _load(periods)
    windows = walk_forward_windows(data, base)
    figures: dict = {
        "source": source,
        "periods": data.n_periods,
        "assets": len(data.symbols),
        "windows": len(windows),
        "seeds": seeds,
        "kinds": list(KINDS),
        "fits": len(windows) * seeds * len(KINDS),
        "epochs": base.epochs,
        "hidden": base.hidden,
        "lookback": base.lookback,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_cores": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    all_threads = torch.get_num_threads()
    for device in devices:
        threads = all_threads if device == "cpu-all" else 1
        torch.set_num_threads(threads)
        settings = dataclasses.replace(base, device="cpu" if device.startswith("cpu") else device)
        if device == "cuda":  # the first CUDA call pays the context: not a fit's cost
            torch.zeros(1, device="cuda").sum().item()
        ic = []
        started = time.perf_counter()
        for kind in KINDS:
            for seed in range(seeds):
                for window in windows:
                    model, _ = fit(
                        kind, data, window.train_rows, dataclasses.replace(settings, seed=seed)
                    )
                    ic.append(score_rows(model, data, window.test_rows))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        values = np.concatenate(ic)
        figures[f"fit_seconds_{device}"] = round(seconds, 2)
        figures[f"fits_per_s_{device}"] = round(figures["fits"] / seconds, 3)
        figures[f"threads_{device}"] = threads
        figures[f"out_of_sample_ic_{device}"] = round(float(np.nanmean(values)), 4)
        print(f"{device}: {figures['fits']} fits in {seconds:.1f} s ({threads} CPU threads)")
        if "fit_seconds_cpu" in figures and "fit_seconds_cuda" in figures:
            figures["cuda_speedup_over_one_cpu_thread"] = round(
                figures["fit_seconds_cpu"] / figures["fit_seconds_cuda"], 2
            )
        # After each device: a run cut short by a time limit keeps what it measured.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    first = steps.add_parser("prepare", help="the models' training data of a file, to .npz")
    first.add_argument("--data", type=Path, required=True)
    first.add_argument("--config", type=Path)
    first.add_argument("--out", type=Path, required=True)
    second = steps.add_parser("run", help="time every fit of the grid on each device")
    second.add_argument("--periods", type=Path, required=True)
    second.add_argument("--devices", default="cpu,cuda", help="cpu, cpu-all, cuda (comma list)")
    second.add_argument("--seeds", type=int, default=3)
    second.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    if arguments.step == "prepare":
        prepare(arguments.data, arguments.config, arguments.out)
    else:
        run(arguments.periods, arguments.devices.split(","), arguments.seeds, arguments.out)


if __name__ == "__main__":
    main()

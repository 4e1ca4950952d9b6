"""``deepfactor factors report``: how each factor of the library would have done on a data file.

For every factor (volume factors only where the data has volume): per-period rank IC and
quintile long-short return against the next period's returns, summarised as IC mean, ICIR,
t-statistic and hit rate; a table on stdout, ``factor_report.csv`` / ``.json`` and a picture of
the cumulative long-short returns in the output directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import structlog

from engine.data import Panel
from strategies.evaluation import FactorEvaluation, evaluate_factor
from strategies.factors import FACTORS, FactorInputs, compute_panel

log = structlog.get_logger("services.commands.factor_report")
COLUMNS = (
    "factor",
    "periods",
    "ic_mean",
    "ic_std",
    "icir",
    "ic_tstat",
    "ic_hit_rate",
    "long_short_mean",
    "long_short_annualised",
    "long_short_tstat",
)


def usable_factors(panel: Panel, names: list[str] | None = None) -> list[str]:
    """Return the factors that can run on ``panel``; volume factors are dropped (with one
    warning naming them) when the data is close-only."""
    names = list(FACTORS) if names is None else names
    unknown = [n for n in names if n not in FACTORS]
    if unknown:
        raise ValueError(f"unknown factors {unknown}; known: {sorted(FACTORS)}")
    if panel.volume is None:
        dropped = [n for n in names if FACTORS[n].needs_volume]
        if dropped:
            log.warning(
                "factors.volume_factors_off",
                factors=dropped,
                reason="close-only data has no volume",
            )
        names = [n for n in names if not FACTORS[n].needs_volume]
    return names


def evaluate_panel(
    panel: Panel, horizon: int, quantiles: int = 5, names: list[str] | None = None
) -> list[FactorEvaluation]:
    """Compute every usable factor on ``panel`` with its defaults and evaluate it."""
    inputs = FactorInputs.from_panel(panel)
    names = usable_factors(panel, names)
    exposures = compute_panel([(n, n, {}) for n in names], inputs)
    return [
        evaluate_factor(n, exposures[n], panel.close, panel.bar_open, horizon, quantiles)
        for n in names
    ]


def report_table(evaluations: list[FactorEvaluation], periods_per_year: float) -> pd.DataFrame:
    """Return one row of summary statistics per factor, sorted by |ICIR|."""
    rows = [{"factor": e.name, **e.summary(periods_per_year)} for e in evaluations]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("icir", key=lambda c: -c.abs(), na_position="last").reset_index(
        drop=True
    )


def plot_cumulative(evaluations: list[FactorEvaluation], path: Path, title: str) -> None:
    """Write a PNG of each factor's cumulative long-short return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(12, 6.5), dpi=110)
    colours = plt.get_cmap("tab20").colors
    for position, evaluation in enumerate(evaluations):
        spread = np.nan_to_num(evaluation.spread, nan=0.0)
        times = evaluation.period_times.astype("datetime64[ms]").astype("O")
        # Growth of 1 on a log axis: factors far apart in size stay readable side by side.
        growth = np.maximum(np.cumprod(1.0 + spread), 1e-6)
        axis.plot(
            times,
            growth,
            label=evaluation.name,
            linewidth=1.1,
            color=colours[position % len(colours)],
            linestyle="-" if position < len(colours) else "--",
        )
    axis.set_yscale("log")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_title(title)
    axis.set_ylabel("growth of 1 in the long-short portfolio (top minus bottom quintile)")
    axis.legend(fontsize=7, ncol=3, loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _format(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ("ic_mean", "ic_std", "icir", "ic_tstat", "ic_hit_rate", "long_short_tstat"):
        shown[column] = shown[column].map(
            lambda v: "" if v is None or math.isnan(v) else f"{v:+.3f}"
        )
    for column in ("long_short_mean", "long_short_annualised"):
        shown[column] = shown[column].map(
            lambda v: "" if v is None or math.isnan(v) else f"{v:+.2%}"
        )
    return shown.to_string(index=False)


def run_factor_report(
    panel: Panel, out_dir: Path, horizon: int, quantiles: int = 5
) -> pd.DataFrame:
    """Evaluate the library on ``panel``, print the table and write the report files."""
    evaluations = evaluate_panel(panel, horizon, quantiles)
    periods_per_year = panel.periods_per_year() / horizon
    table = report_table(evaluations, periods_per_year)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "factor_report.csv", index=False)
    (out_dir / "factor_report.json").write_text(
        json.dumps(
            {
                "source": panel.source,
                "horizon_bars": horizon,
                "quantiles": quantiles,
                "periods_per_year": periods_per_year,
                "factors": json.loads(table.to_json(orient="records")),
            },
            indent=2,
        )
        + "\n"
    )
    plot_cumulative(
        evaluations,
        out_dir / "factor_returns.png",
        f"{Path(panel.source).name}: factor long-short returns, {horizon}-bar periods",
    )
    print(
        f"factor report: {panel.source}, {panel.n_bars} bars x {len(panel.symbols)} assets, "
        f"non-overlapping {horizon}-bar periods, quintile long-short"
    )
    print(_format(table))
    print(f"written to {out_dir}")
    return table

"""What ``deepfactor evaluate`` leaves in ``--out``: results.json, table.md and the pictures,
and the one-sentence verdict on the paper's claim that ends the table.

The verdict compares the factor-weight LSTM (risk limits on, figures averaged over its seeds)
with every classical multi-factor baseline (limits on) on the claim's three figures, maximum
drawdown, Sharpe ratio and 95% VaR, and on the Sharpe ratio in each market regime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.commands.evaluate_tasks import RunSeries

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
CURVES_FILE = "curves.csv"
PICTURES = ("equity.png", "drawdown.png", "regimes.png")
CANDIDATE = "lstm"
_FIGURE_NAMES = {
    "max_drawdown": "maximum drawdown",
    "sharpe_ratio": "Sharpe ratio",
    "var_95": "95% VaR",
}
_LOWER_IS_BETTER = {"max_drawdown": True, "sharpe_ratio": False, "var_95": True}
_SIGNIFICANCE = 0.05


def _better(figure: str, candidate: float | None, baseline: float | None) -> bool:
    if candidate is None or baseline is None:
        return False
    return candidate < baseline if _LOWER_IS_BETTER[figure] else candidate > baseline


def _and_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Judge the claim on ``results`` (results.json's content without the verdict)."""
    strategies = results["strategies"]
    if CANDIDATE not in strategies:
        raise ValueError("verdict: the factor-weight LSTM (lstm) was not evaluated")
    classical = [key for key, entry in strategies.items() if entry["classical"]]
    if not classical:
        raise ValueError("verdict: no classical multi-factor baseline was evaluated")
    mine = strategies[CANDIDATE]["limits_on"]
    criteria: dict[str, dict[str, bool]] = {}
    for figure in _FIGURE_NAMES:
        criteria[figure] = {
            key: _better(figure, mine["mean"][figure], strategies[key]["limits_on"]["mean"][figure])
            for key in classical
        }
    regime_wins: dict[str, dict[str, bool]] = {}
    for regime, figures in mine["regimes_mean"].items():
        regime_wins[regime] = {
            key: _better(
                "sharpe_ratio",
                figures["sharpe_ratio"],
                strategies[key]["limits_on"]["regimes_mean"].get(regime, {}).get("sharpe_ratio"),
            )
            for key in classical
        }
    significant = {
        test["baseline"]: test["jkm_seed_mean"]["p_value"]
        for test in results["sharpe_tests"]
        if test["strategy"] == CANDIDATE
        and test["limits"] == "on"
        and test["baseline"] in classical
    }
    held = [f for f, wins in criteria.items() if all(wins.values())]
    missed = [f for f in criteria if f not in held]
    regimes_held = [r for r, wins in regime_wins.items() if all(wins.values())]
    regimes_missed = [r for r in regime_wins if r not in regimes_held]
    baselines = _and_list([strategies[k]["label"].replace(" (classical)", "") for k in classical])
    p_values = [p for p in significant.values() if p is not None]
    better_sharpe = [k for k in classical if criteria["sharpe_ratio"][k]]
    n_significant = sum(1 for k in better_sharpe if (significant.get(k) or 1.0) < _SIGNIFICANCE)
    significance = (
        f"the Sharpe ratio is significantly higher (Jobson-Korkie-Memmel, 5%) than "
        f"{n_significant} of the {len(classical)} baselines"
        if p_values
        else "no Sharpe test could be made"
    )
    names = [_FIGURE_NAMES[f] for f in held]
    if len(held) == len(criteria) and not regimes_missed:
        sentence = (
            f"The paper's claim holds on this data: with the risk limits on, the factor-weight "
            f"LSTM has a smaller maximum drawdown, a higher Sharpe ratio and a smaller 95% VaR "
            f"than each classical baseline ({baselines}) and a higher Sharpe ratio in every "
            f"regime; {significance}."
        )
        outcome = "holds"
    elif not held and not regimes_held:
        sentence = (
            f"The paper's claim does not hold on this data: with the risk limits on, the "
            f"factor-weight LSTM beats every classical baseline ({baselines}) on none of "
            f"maximum drawdown, Sharpe ratio and 95% VaR, and in no regime on the Sharpe "
            f"ratio; {significance}."
        )
        outcome = "does not hold"
    else:
        part = (
            f"a better {_and_list(names)} than every classical baseline ({baselines})"
            if names
            else f"no figure better than every classical baseline ({baselines})"
        )
        not_part = (
            f", but not a better {_and_list([_FIGURE_NAMES[f] for f in missed])}" if missed else ""
        )
        regime_part = (
            f"; a higher Sharpe ratio than all of them in the {_and_list(regimes_held)} regime"
            f"{'s' if len(regimes_held) > 1 else ''}"
            if regimes_held
            else "; a higher Sharpe ratio than all of them in no regime"
        )
        if regimes_missed and regimes_held:
            regime_part += f", not in {_and_list(regimes_missed)}"
        sentence = (
            f"The paper's claim holds in part on this data: with the risk limits on, the "
            f"factor-weight LSTM has {part}{not_part}{regime_part}; {significance}."
        )
        outcome = "holds in part"
    return {
        "outcome": outcome,
        "sentence": sentence,
        "figures_better_than_every_baseline": held,
        "by_figure": criteria,
        "sharpe_by_regime": regime_wins,
        "sharpe_p_values": significant,
    }


# -- table.md -------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(entry: dict[str, Any], name: str, fmt) -> str:
    spread = entry.get("spread", {}).get(name)
    value = entry["mean"].get(name)
    if spread is not None:
        return f"{fmt(spread['mean'])} ± {fmt(spread['std'])}"
    return fmt(value)


_COLUMNS = (
    ("Ann. return", "annualised_return", _pct),
    ("Ann. vol", "annualised_volatility", _pct),
    ("Sharpe", "sharpe_ratio", _num),
    ("Sortino", "sortino_ratio", _num),
    ("Calmar", "calmar_ratio", _num),
    ("Max DD", "max_drawdown", _pct),
    ("DD bars", "max_drawdown_duration", lambda v: _num(v, 0)),
    ("VaR 95", "var_95", lambda v: _pct(v, 2)),
    ("ES 95", "expected_shortfall_95", lambda v: _pct(v, 2)),
    ("VaR 99", "var_99", lambda v: _pct(v, 2)),
    ("ES 99", "expected_shortfall_99", lambda v: _pct(v, 2)),
    ("VaR breaches", "var_breach_rate", lambda v: _pct(v, 2)),
    ("Kupiec p", "var_kupiec_p_value", lambda v: _num(v, 3)),
    ("Turnover/yr", "annual_turnover", lambda v: _num(v, 1)),
    ("Fees", "fees_paid", lambda v: "n/a" if v is None else f"{v:,.0f}"),
    ("Hit rate", "period_hit_rate", _pct),
)


def _figures_table(results: dict[str, Any], limits: str) -> list[str]:
    header = "| Strategy | " + " | ".join(c[0] for c in _COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(_COLUMNS) + 1)]
    for entry in results["strategies"].values():
        cell = entry[limits]
        values = " | ".join(_cell(cell, name, fmt) for _, name, fmt in _COLUMNS)
        lines.append(f"| {entry['label']} | {values} |")
    return lines


def _tests_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| Strategy | Baseline | Limits | Sharpe | Baseline Sharpe | Difference | JKM p "
        "| Bootstrap p | Bootstrap 95% interval | JKM p by seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {k: v["label"] for k, v in results["strategies"].items()}
    for test in results["sharpe_tests"]:
        jkm, boot = test["jkm_seed_mean"], test["bootstrap_seed_mean"]
        low, high = boot["confidence_interval"] or (None, None)
        by_seed = ", ".join(_num(t["p_value"], 3) for t in test["jkm_by_seed"])
        lines.append(
            f"| {labels[test['strategy']]} | {labels[test['baseline']]} | {test['limits']} "
            f"| {_num(jkm['sharpe_a'])} | {_num(jkm['sharpe_b'])} | {_num(jkm['difference'])} "
            f"| {_num(jkm['p_value'], 3)} | {_num(boot['p_value'], 3)} "
            f"| [{_num(low)}, {_num(high)}] | {by_seed} |"
        )
    return lines


def _regime_table(results: dict[str, Any], block: str = "regimes") -> list[str]:
    regimes = [r for r, n in results[block]["periods"].items() if n]
    means_key = "regimes_mean" if block == "regimes" else "known_regimes_mean"
    header = "| Strategy | " + " | ".join(
        f"{r}: Sharpe | {r}: max DD | {r}: ann. return" for r in regimes
    )
    lines = [header + " |", "|" + "---|" * (3 * len(regimes) + 1)]
    for entry in results["strategies"].values():
        means = entry["limits_on"][means_key]
        cells = []
        for r in regimes:
            m = means.get(r)
            cells += (
                [_num(m["sharpe_ratio"]), _pct(m["max_drawdown"]), _pct(m["annualised_return"])]
                if m
                else ["n/a"] * 3
            )
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return lines


def _known_regimes(results: dict[str, Any]) -> list[str]:
    known = results.get("known_regimes")
    if known is None:
        return []
    agreement = known["rule_agreement"]
    return [
        "## Known regimes (risk limits on)",
        "",
        f"The regimes the market was generated in ({known['source']}): {known['rule']} "
        "Periods in the evaluation: "
        + ", ".join(f"{r} {n}" for r, n in known["periods"].items())
        + f". The rule above named the known regime in {_pct(agreement)} of them.",
        "",
        *_regime_table(results, "known_regimes"),
        "",
    ]


def render_table(results: dict[str, Any]) -> str:
    """table.md: the comparison, the tests, the regimes, the definitions, then the verdict."""
    data, setup, regimes = results["data"], results["setup"], results["regimes"]
    limits = setup["risk_limits"]
    lines = [
        f"# Evaluation of the paper's claim on {data['source']}",
        "",
        f"{data['assets']} assets, {data['bars']} {data['timeframe']} bars "
        f"({data['start'][:10]} .. {data['end'][:10]}). Every strategy is scored from the first "
        f"walk-forward fit ({data['evaluation_start'][:10]}) to the end: "
        f"{data['evaluation_periods']} periods. Walk-forward: {setup['walk_forward_windows']} "
        f"windows, a refit every {setup['retrain_every']} periods after {setup['min_train']} "
        f"({setup['window']} window); seeds {setup['seeds']} for the LSTMs (figures: mean ± std "
        f"over seeds). Factors: {', '.join(setup['factors'])}. Fees {setup['fee_rate']:.4%} of "
        f"notional, slippage {setup['slippage_bps']:g} bps. Risk limits when on: drawdown stop "
        f"{limits['drawdown_stop']:.0%}, {limits['var_method']} VaR "
        f"{limits['var_confidence']:.0%} limit {limits['var_limit']:.1%}.",
        "",
        "## Risk limits on",
        "",
        *_figures_table(results, "limits_on"),
        "",
        "## Risk limits off",
        "",
        *_figures_table(results, "limits_off"),
        "",
        "## Sharpe-ratio differences",
        "",
        "Jobson-Korkie with Memmel's correction on the seeds' mean returns (one account split "
        "across the seeds' models), and a stationary block bootstrap of the same difference "
        f"({setup['bootstrap_repetitions']} repetitions); two-sided p-values.",
        "",
        *_tests_table(results),
        "",
        "## Market regimes (risk limits on)",
        "",
        f"Rule: {regimes['rule']} The market is the equal-weight index of every asset in the "
        f"file. Periods in the evaluation: "
        + ", ".join(f"{r} {n}" for r, n in regimes["periods"].items())
        + f" ({regimes['unlabelled']} unlabelled). Each regime's returns are chained into one "
        "curve.",
        "",
        *_regime_table(results),
        "",
        *_known_regimes(results),
        "## Notes",
        "",
        "- Annualised figures at a zero risk-free rate; VaR and ES are historical, of one "
        "period's return. VaR breaches: the share of periods whose loss exceeded the risk "
        "model's VaR forecast of the book standing at the close before (the rebalancer's "
        f"{limits['var_confidence']:.0%} forecast, limits on or off), with Kupiec's "
        "proportion-of-failures test. Turnover: notional traded per year over equity. Hit "
        "rate: the share of periods with a positive return.",
        *(
            f"- **{entry['label']}**: {entry['definition']}"
            for entry in results["strategies"].values()
        ),
        "",
        results["verdict"]["sentence"],
        "",
    ]
    return "\n".join(lines)


# -- pictures -------------------------------------------------------------------------------


def _curves(runs: list[RunSeries], start: np.datetime64, limits: bool) -> dict[str, pd.Series]:
    """Per strategy, the equity from 1 at the evaluation start (seeds: their mean return)."""
    grouped: dict[str, list[pd.Series]] = {}
    for run in runs:
        if run.limits != limits:
            continue
        keep = run.times >= start
        curve = pd.Series(run.equity[keep], index=pd.DatetimeIndex(run.times[keep]))
        grouped.setdefault(run.strategy, []).append(curve.pct_change().fillna(0.0))
    return {key: (1.0 + pd.concat(r, axis=1).mean(axis=1)).cumprod() for key, r in grouped.items()}


def write_pictures(
    out_dir: Path, results: dict[str, Any], runs: list[RunSeries], start: np.datetime64
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v["label"] for k, v in results["strategies"].items()}
    curves = _curves(runs, start, limits=True)
    figure, axis = plt.subplots(figsize=(11, 5.5))
    for key, curve in curves.items():
        axis.plot(curve.index, curve.to_numpy(), label=labels[key], linewidth=1.2)
    axis.set_yscale("log")
    axis.set_title("Equity from 1 at the evaluation start (risk limits on; LSTMs: seed mean)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / PICTURES[0], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(11, 4.5))
    for key, curve in curves.items():
        drawdown = 1.0 - curve / curve.cummax()
        axis.plot(curve.index, -drawdown.to_numpy(), label=labels[key], linewidth=1.0)
    stop = results["setup"]["risk_limits"]["drawdown_stop"]
    if stop:
        axis.axhline(-stop, color="black", linestyle="--", linewidth=0.8, label="drawdown stop")
    axis.set_title("Drawdown (risk limits on)")
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / PICTURES[1], dpi=110)
    plt.close(figure)

    regimes = [r for r, n in results["regimes"]["periods"].items() if n]
    figure, axis = plt.subplots(figsize=(11, 4.5))
    keys = list(results["strategies"])
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        means = results["strategies"][key]["limits_on"]["regimes_mean"]
        values = [means.get(r, {}).get("sharpe_ratio") or 0.0 for r in regimes]
        axis.bar(np.arange(len(regimes)) + i * width, values, width, label=labels[key])
    axis.set_xticks(np.arange(len(regimes)) + width * (len(keys) - 1) / 2, regimes)
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set_title("Sharpe ratio per market regime (risk limits on)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(out_dir / PICTURES[2], dpi=110)
    plt.close(figure)


def run_column(run: RunSeries) -> str:
    """A run's column in curves.csv: ``strategy:seed:limits``, e.g. ``lstm:s0:on``."""
    seed = "-" if run.seed is None else f"s{run.seed}"
    return f"{run.strategy}:{seed}:{'on' if run.limits else 'off'}"


def curves_frame(runs: list[RunSeries], start: np.datetime64) -> pd.DataFrame:
    """Every run's equity from the evaluation start, one column per run (``run_column``):
    what results.json's figures were computed from, for anyone to recompute them."""
    columns = {}
    for run in runs:
        keep = run.times >= start
        columns[run_column(run)] = pd.Series(
            run.equity[keep], index=pd.DatetimeIndex(run.times[keep], name="timestamp")
        )
    return pd.DataFrame(columns)


def write_outputs(
    out_dir: Path, results: dict[str, Any], runs: list[RunSeries], start: np.datetime64
) -> None:
    """results.json (sorted keys: byte-identical for identical inputs), table.md, curves.csv
    and the pictures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / TABLE_FILE).write_text(render_table(results))
    curves_frame(runs, start).to_csv(out_dir / CURVES_FILE)
    write_pictures(out_dir, results, runs, start)

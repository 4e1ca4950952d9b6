"""``deepfactor evaluate``: the paper's claim, tested walk-forward on the user's data.

Li & Gu (2025) claim that an LSTM choosing and weighting the factors each period gives a
smaller maximum drawdown, a higher Sharpe ratio and a smaller VaR than a classical
multi-factor model, in every market environment. Here every strategy is replayed through the
real services (in-memory bus, simulated clock, simulated broker with the config's fees and
slippage), with the risk limits on and off; the trained models are fitted walk-forward, each
serving only periods after its fit. The grid (models x seeds x walk-forward windows, then
strategies x seeds x limits) runs on a process pool or Ray (``evaluate_grid``); the figures,
the tests and the regimes come from ``engine.evaluation``; ``evaluate_output`` writes
``results.json``, ``table.md`` and the pictures.

Every strategy is scored over the same span: from the first walk-forward fit's decision time
to the end of the data (before it, the trained strategies have no model to serve).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import structlog

from engine.config import Config
from engine.data import Panel
from engine.errors import DataError
from engine.evaluation import (
    REGIMES,
    StrategyMetrics,
    bootstrap_sharpe_difference,
    equal_weight_index_returns,
    jobson_korkie_memmel,
    label_regimes,
    metrics_by_regime,
    spread_across_seeds,
    strategy_metrics,
)
from engine.progress import JobProgress
from services.commands.evaluate_grid import make_executor, run_all, task_logging
from services.commands.evaluate_tasks import (
    BacktestTask,
    FitResult,
    FitTask,
    RunSeries,
    fit_window,
    replay,
)

log = structlog.get_logger("services.commands.evaluate")

# The figures compared in the table and the verdict, by StrategyMetrics field.
CLAIM_FIGURES = ("max_drawdown", "sharpe_ratio", "var_95")
BOOTSTRAP_REPETITIONS = 2000


@dataclass(frozen=True)
class StrategySpec:
    """One strategy of the comparison and what it is, for the table's notes."""

    key: str
    label: str
    model: str  # [strategy] name
    trained: bool  # fitted walk-forward
    seeded: bool  # a network: several seeds
    classical: bool  # a classical multi-factor baseline the claim is tested against
    definition: str


STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec(
        "lstm",
        "Factor-weight LSTM (the paper's model)",
        "lstm",
        True,
        True,
        False,
        "An LSTM over the factors' recent performance (the features of each FactorSnapshot: "
        "per-factor rank IC, quintile spread and dispersion over [model] lookback periods) "
        "outputs, each period, a gate (use the factor or not) and a weight per factor; the score "
        "of an asset is the gated, weighted sum of its standardised factor exposures. Fitted "
        "walk-forward to maximise the rank IC of the score with the next period's returns.",
    ),
    StrategySpec(
        "asset-lstm",
        "Asset-level LSTM",
        "asset-lstm",
        True,
        True,
        False,
        "An LSTM over each asset's own history of factor exposures scores the asset directly "
        "(no factor weights); fitted walk-forward like the factor-weight LSTM.",
    ),
    StrategySpec(
        "equal-weight",
        "Equal factor weights (classical)",
        "equal-weight",
        False,
        False,
        True,
        "The score is the sum of the standardised factor exposures times the configured "
        "[[strategy.factors]] weight of each factor (1 unless set), the same every period.",
    ),
    StrategySpec(
        "trailing-ic",
        "Trailing-IC weights (classical)",
        "trailing-ic",
        False,
        False,
        True,
        "Each factor is weighted by its mean rank IC over the last [model] lookback periods "
        "(negative means flip the factor), recomputed every period from realised returns only.",
    ),
    StrategySpec(
        "ridge",
        "Linear baseline (classical)",
        "ridge",
        True,
        False,
        True,
        "A ridge regression (scikit-learn Ridge, alpha = [model] ridge_alpha) of the next "
        "period's cross-sectional return ranks on the standardised exposures, refitted "
        "walk-forward on the same windows as the LSTMs; its coefficients are the factor weights.",
    ),
    StrategySpec(
        "universe",
        "Equal-weight universe",
        "equal-weight",
        False,
        False,
        False,
        "Every asset with a complete factor row at the rebalance at weight 1/N (top-k "
        "construction with top_fraction = 1), bought and rebalanced at every scheduled "
        "rebalance, with the same fees, slippage and risk limits as the others.",
    ),
)
BY_KEY = {spec.key: spec for spec in STRATEGIES}


@dataclass(frozen=True)
class EvaluateOptions:
    seeds: int = 3
    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    device: str = "cpu"
    strategies: tuple[str, ...] = tuple(spec.key for spec in STRATEGIES)
    bootstrap_repetitions: int = BOOTSTRAP_REPETITIONS
    progress: bool = True


@dataclass(frozen=True)
class KnownRegimes:
    """The regime each bar was generated in (a synthetic market's, or a user's own labels),
    indexed by bar close time: the figures are split by them too, beside the rule's."""

    labels: pd.Series
    rule: str
    source: str


def seeds_of(config: Config, options: EvaluateOptions) -> tuple[int, ...]:
    return tuple(config.model.seed + i for i in range(options.seeds))


def strategy_config(config: Config, spec: StrategySpec, seed: int | None, limits: bool) -> Config:
    """``config`` as one cell of the grid: the strategy, its seed, limits on or off."""
    portfolio = config.portfolio
    if spec.key == "universe":
        portfolio = msgspec.structs.replace(portfolio, construction="top-k", top_fraction=1.0)
    model = msgspec.structs.replace(
        config.model, walk_forward=True, seed=config.model.seed if seed is None else seed
    )
    return msgspec.structs.replace(
        config,
        strategy=msgspec.structs.replace(config.strategy, name=spec.model),
        model=model,
        portfolio=portfolio,
        risk=msgspec.structs.replace(config.risk, enabled=limits),
    )


def check_evaluable(panel: Panel, min_assets: int) -> None:
    """Refuse a file that cannot carry a cross-sectional comparison, saying what is needed."""
    if len(panel.symbols) < min_assets:
        raise DataError(
            f"{panel.source}: {len(panel.symbols)} asset(s); evaluate ranks assets against "
            f"each other and needs at least {min_assets} (more make the comparison meaningful: "
            f"30 or more)"
        )


def plan_windows(config: Config, panel: Panel, options: EvaluateOptions):
    """The models' training data and the walk-forward windows, or a DataError saying why the
    file is too short."""
    from services.commands.model_data import period_data
    from services.commands.train import settings_of
    from strategies.models import ModelError
    from strategies.models.training import MIN_ASSETS, walk_forward_windows

    settings = settings_of(config, options.device)
    with task_logging():  # the factor service's replay logs every schedule tick
        data = period_data(config, panel)
    try:
        windows = walk_forward_windows(data, settings)
    except ModelError as error:
        windows = []
        reason = str(error)
    else:
        reason = f"{len(windows)} walk-forward window(s)"
    if len(windows) < 2:
        m = config.model
        raise DataError(
            f"{panel.source}: {panel.n_bars} bars ({_day(panel.bar_open[0])} .. "
            f"{_day(panel.bar_open[-1])}) give {data.n_periods} periods and {reason}; evaluate "
            f"needs at least 2 walk-forward windows: [model] min_train ({m.min_train}) periods "
            f"of history with {MIN_ASSETS}+ assets and every factor warmed up, then at least "
            f"2 x [model] retrain_every ({m.retrain_every}) periods to test on"
        )
    return data, settings, windows


def _day(stamp: Any) -> str:
    return str(np.datetime64(stamp, "D"))


def run_evaluation(
    config: Config,
    panel: Panel,
    out_dir: Path,
    options: EvaluateOptions,
    known: KnownRegimes | None = None,
) -> dict[str, Any]:
    """Run the grid, compute every figure and test, write the outputs; return results.json's
    content."""
    from services.commands.evaluate_output import write_outputs
    from strategies.models.training import MIN_ASSETS

    started = time.perf_counter()
    check_evaluable(panel, MIN_ASSETS)
    specs = [BY_KEY[key] for key in options.strategies]
    seeds = seeds_of(config, options)
    data, settings, windows = plan_windows(config, panel, options)
    fit_tasks = [
        FitTask(spec.model, seed, number, w.cutoff, w.train_rows, w.test_rows)
        for spec in specs
        if spec.trained
        for seed in (seeds if spec.seeded else seeds[:1])
        for number, w in enumerate(windows, 1)
    ]
    cells = [
        (spec, seed, limits)
        for spec in specs
        for seed in (seeds if spec.seeded else (None,))
        for limits in (True, False)
    ]
    progress = JobProgress("evaluate", len(fit_tasks) + len(cells), "task", bar=options.progress)
    executor = make_executor(options.executor, options.jobs, options.ray_address)
    log.info(
        "evaluate.started",
        source=panel.source,
        assets=len(panel.symbols),
        bars=panel.n_bars,
        windows=len(windows),
        fits=len(fit_tasks),
        backtests=len(cells),
        seeds=list(seeds),
        executor=options.executor,
        jobs=options.jobs,
    )
    try:
        fitted: list[FitResult] = run_all(
            executor, fit_window, (data, settings), fit_tasks, lambda _: progress.update(1)
        )
        fit_seconds = time.perf_counter() - started
        schedules = _schedules(fitted)
        tasks = [
            BacktestTask(
                spec.key,
                seed,
                limits,
                strategy_config(config, spec, seed, limits),
                schedules.get((spec.model, seeds[0] if seed is None else seed))
                if spec.trained
                else None,
            )
            for spec, seed, limits in cells
        ]
        runs: list[RunSeries] = run_all(
            executor, replay, panel, tasks, lambda _: progress.update(1)
        )
    finally:
        executor.close()
        progress.close()
    evaluation_start = min(result.serves_from for result in fitted) if fitted else None
    if evaluation_start is None:
        evaluation_start = data.times[windows[0].cutoff]
    results = summarise(
        config, panel, specs, seeds, windows, data, fitted, runs, evaluation_start, options, known
    )
    write_outputs(out_dir, results, runs, evaluation_start)
    log.info(
        "evaluate.done",
        out=str(out_dir),
        verdict=results["verdict"]["sentence"],
        fit_seconds=round(fit_seconds, 1),
        seconds=round(time.perf_counter() - started, 1),
    )
    return results


def _schedules(fitted: list[FitResult]) -> dict[tuple[str, int], list[tuple[np.datetime64, Any]]]:
    schedules: dict[tuple[str, int], list[tuple[np.datetime64, Any]]] = {}
    for result in sorted(fitted, key=lambda r: (r.kind, r.seed, r.window)):
        schedules.setdefault((result.kind, result.seed), []).append(
            (result.serves_from, result.model)
        )
    return schedules


# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredRun:
    """One run over the evaluation span: its curve, returns and figures."""

    run: RunSeries
    equity: pd.Series  # from the evaluation start, indexed by bar close time
    metrics: StrategyMetrics
    regimes: dict[str, StrategyMetrics]
    known_regimes: dict[str, StrategyMetrics]  # by the market's true regimes, where known


def score_run(
    run: RunSeries,
    start: np.datetime64,
    periods_per_year: float,
    var_confidence: float,
    regimes: pd.Series,
    known: pd.Series | None = None,
) -> ScoredRun:
    """The figures of ``run`` from ``start`` on.

    The VaR forecast tested against the return of bar t+1 is the one standing at bar t (made
    before the return); a missing or zero forecast (no book, no risk model yet) is none.
    Turnover is the notional traded on a bar over the equity before it.
    """
    keep = run.times >= start
    times, equity = run.times[keep], run.equity[keep]
    forecasts = run.expected_var[keep][:-1].copy()
    forecasts[~(forecasts > 0)] = np.nan
    turnover = run.traded[keep][1:] / equity[:-1]
    fees = run.fees[keep][1:]
    index = pd.DatetimeIndex(times)
    curve = pd.Series(equity, index=index)
    metrics = strategy_metrics(
        equity,
        periods_per_year,
        var_forecasts=forecasts,
        var_confidence=var_confidence,
        turnover=turnover,
        fees=fees,
    )

    def split(by: pd.Series) -> dict[str, StrategyMetrics]:
        return metrics_by_regime(
            equity,
            by.reindex(index[1:]).to_numpy(dtype=object),
            periods_per_year,
            var_forecasts=forecasts,
            var_confidence=var_confidence,
            turnover=turnover,
            fees=fees,
        )

    return ScoredRun(run, curve, metrics, split(regimes), {} if known is None else split(known))


def market_regimes(panel: Panel):  # -> RegimeLabels
    """Regimes of the equal-weight index of the whole file (past data only, per period)."""
    closes = pd.DataFrame(
        panel.close, index=pd.DatetimeIndex(panel.close_time), columns=panel.symbols
    )
    return label_regimes(equal_weight_index_returns(closes))


def metrics_dict(metrics: StrategyMetrics) -> dict[str, Any]:
    figures = dataclasses.asdict(metrics)
    test = figures.pop("var_backtest")
    if test is not None:
        figures["var_breaches"] = test["breaches"]
        figures["var_observations"] = test["observations"]
        figures["var_breach_rate"] = test["breach_rate"]
        figures["var_expected_rate"] = test["expected_rate"]
        figures["var_kupiec_lr"] = test["statistic"]
        figures["var_kupiec_p_value"] = test["p_value"]
    return figures


def _mean_figures(runs: list[ScoredRun]) -> dict[str, Any]:
    """Each figure's mean over the runs (one per seed); a single run's figures as they are."""
    if len(runs) == 1:
        return metrics_dict(runs[0].metrics)
    spread = spread_across_seeds([r.metrics for r in runs])
    return {name: s.mean for name, s in spread.items()}


def _regime_means(runs: list[ScoredRun], known: bool = False) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for regime in REGIMES:
        split = [r.known_regimes if known else r.regimes for r in runs]
        present = [by[regime] for by in split if regime in by]
        if not present:
            continue
        out[regime] = {
            name: float(np.mean([getattr(m, name) for m in present]))
            for name in ("periods", "annualised_return", "sharpe_ratio", "max_drawdown", "var_95")
        }
    return out


def _returns(run: ScoredRun) -> np.ndarray:
    values = run.equity.to_numpy()
    return values[1:] / values[:-1] - 1.0


def _ensemble_returns(runs: list[ScoredRun]) -> np.ndarray:
    # The seeds' mean return each period: one account split equally across the seeds' models.
    return np.mean([_returns(r) for r in runs], axis=0)


def sharpe_tests(
    candidate: list[ScoredRun],
    baseline: list[ScoredRun],
    periods_per_year: float,
    repetitions: int,
) -> dict[str, Any]:
    """The Sharpe difference of ``candidate`` (one run per seed) over ``baseline``: the
    Jobson-Korkie-Memmel test per seed and on the seeds' mean returns, and a stationary block
    bootstrap on the seeds' mean returns (seeded: the same p-value every run)."""
    reference = _ensemble_returns(baseline)
    by_seed = []
    for run in candidate:
        test = jobson_korkie_memmel(_returns(run), reference, periods_per_year)
        by_seed.append({"seed": run.run.seed, **dataclasses.asdict(test)})
    ensemble = _ensemble_returns(candidate)
    jkm = jobson_korkie_memmel(ensemble, reference, periods_per_year)
    boot = bootstrap_sharpe_difference(
        ensemble, reference, periods_per_year, repetitions=repetitions, seed=0
    )
    return {
        "jkm_by_seed": by_seed,
        "jkm_seed_mean": dataclasses.asdict(jkm),
        "bootstrap_seed_mean": dataclasses.asdict(boot),
    }


def summarise(
    config: Config,
    panel: Panel,
    specs: list[StrategySpec],
    seeds: tuple[int, ...],
    windows: list[Any],
    data: Any,
    fitted: list[FitResult],
    runs: list[RunSeries],
    start: np.datetime64,
    options: EvaluateOptions,
    known: KnownRegimes | None = None,
) -> dict[str, Any]:
    """Everything results.json holds (deterministic: no timings, no paths but the file's name)."""
    from services.commands.evaluate_output import verdict

    periods_per_year = panel.periods_per_year()
    labels = market_regimes(panel)
    regimes = _naive(labels.labels.astype(object))
    truth = None if known is None else _naive(known.labels.astype(object))
    scored: dict[tuple[str, bool], list[ScoredRun]] = {}
    for run in runs:
        scored.setdefault((run.strategy, run.limits), []).append(
            score_run(run, start, periods_per_year, config.risk.var_confidence, regimes, truth)
        )
    strategies: dict[str, Any] = {}
    for spec in specs:
        entry: dict[str, Any] = {
            "label": spec.label,
            "definition": spec.definition,
            "classical": spec.classical,
            "seeded": spec.seeded,
        }
        if spec.trained:
            ic = [r.out_of_sample_ic for r in fitted if r.kind == spec.model]
            values = np.concatenate(ic) if ic else np.zeros(0)
            finite = values[np.isfinite(values)]
            entry["out_of_sample_ic"] = float(finite.mean()) if len(finite) else None
        for limits in (True, False):
            group = scored[(spec.key, limits)]
            cell: dict[str, Any] = {
                "runs": [
                    {
                        "seed": r.run.seed,
                        "metrics": metrics_dict(r.metrics),
                        "regimes": {k: metrics_dict(v) for k, v in r.regimes.items()},
                        "limits_acted": r.run.risk_actions,
                    }
                    for r in group
                ],
                "mean": _mean_figures(group),
                "regimes_mean": _regime_means(group),
            }
            if truth is not None:
                cell["known_regimes_mean"] = _regime_means(group, known=True)
            if len(group) > 1:
                cell["spread"] = {
                    name: dataclasses.asdict(s)
                    for name, s in spread_across_seeds([r.metrics for r in group]).items()
                }
            entry["limits_on" if limits else "limits_off"] = cell
        strategies[spec.key] = entry
    tests = []
    for candidate in (s for s in specs if s.seeded):
        for baseline in (s for s in specs if not s.seeded):
            for limits in (True, False):
                tests.append(
                    {
                        "strategy": candidate.key,
                        "baseline": baseline.key,
                        "limits": "on" if limits else "off",
                        **sharpe_tests(
                            scored[(candidate.key, limits)],
                            scored[(baseline.key, limits)],
                            periods_per_year,
                            options.bootstrap_repetitions,
                        ),
                    }
                )
    evaluated = regimes[(regimes.index > pd.Timestamp(start))]
    end = panel.close_time[-1]
    results: dict[str, Any] = {
        "data": {
            "source": Path(panel.source).name,
            "assets": len(panel.symbols),
            "bars": panel.n_bars,
            "timeframe": panel.timeframe_label,
            "start": str(panel.bar_open[0])[:19],
            "end": str(panel.bar_open[-1])[:19],
            "periods_per_year": periods_per_year,
            "evaluation_start": str(start)[:19],
            "evaluation_end": str(end)[:19],
            "evaluation_periods": int(len(next(iter(scored.values()))[0].equity) - 1),
        },
        "setup": {
            "seeds": list(seeds),
            "walk_forward_windows": len(windows),
            "periods": int(data.n_periods),
            "min_train": config.model.min_train,
            "retrain_every": config.model.retrain_every,
            "window": config.model.window,
            "epochs": config.model.epochs,
            "lookback": config.model.lookback,
            "factors": list(data.factors),
            "schedule": config.schedule.cron or config.schedule.interval,
            "construction": config.portfolio.construction,
            "fee_rate": config.broker.fee_rate,
            "slippage_bps": config.broker.slippage_bps,
            "risk_limits": {
                "drawdown_stop": config.risk.drawdown_stop,
                "var_limit": config.risk.var_limit,
                "var_confidence": config.risk.var_confidence,
                "var_method": config.risk.var_method,
            },
            "bootstrap_repetitions": options.bootstrap_repetitions,
        },
        "regimes": {
            "rule": labels.rule,
            "periods": {r: int((evaluated == r).sum()) for r in REGIMES},
            "unlabelled": int(evaluated.isna().sum()),
        },
        "strategies": strategies,
        "strategy_order": [spec.key for spec in specs],  # the table's (the keys are sorted)
        "sharpe_tests": tests,
    }
    if known is not None and truth is not None:
        evaluated_truth = truth[truth.index > pd.Timestamp(start)]
        both = pd.concat([evaluated, evaluated_truth], axis=1, join="inner").dropna()
        results["known_regimes"] = {
            "source": known.source,
            "rule": known.rule,
            "periods": {r: int((evaluated_truth == r).sum()) for r in REGIMES},
            # How often the past-only rule named the regime the market was generated in.
            "rule_agreement": float((both.iloc[:, 0] == both.iloc[:, 1]).mean())
            if len(both)
            else None,
        }
    results["verdict"] = verdict(results)
    return _plain(results)


def _naive(labels: pd.Series) -> pd.Series:
    # Regime labels on naive UTC times, as the runs' bar close times are.
    if isinstance(labels.index, pd.DatetimeIndex) and labels.index.tz is not None:
        labels = labels.copy()
        labels.index = labels.index.tz_convert("UTC").tz_localize(None)
    return labels


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

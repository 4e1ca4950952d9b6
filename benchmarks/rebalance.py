"""Rebalance latency: a RebalanceDue handled to the last OrderRequest published, 20/100/500 assets.

Set-up, per universe size N: a ``RebalanceService`` on a ``MemoryBus`` and a ``SimulatedClock``,
with the product's default configuration (``engine.config.Config()``: construction "optimizer",
covariance_window 120, var_window 250, the VaR limit, the drawdown stop and the pre-trade checks
on; ``--risk-model`` and ``--risk-factors`` set the optimiser's risk model instead of the
default). Its prices are a seeded ``engine.data.synthetic.synthetic_panel`` of N assets (daily
bars; a market factor, two style factors and regime-switching volatility, so the covariance has a
realistic structure), sent as one BarSet event per bar: first the history the service keeps
(max(covariance_window, var_window, reentry_trend_bars) + 10 bars), then one bar per rebalance.

Each rebalance, on a new bar: the clock moves to the bar's close, the bar and a Signal for it
(fresh seeded standard-normal scores, so every rebalance trades) are handled, then the
RebalanceDue of that bar (distinct id ``rb-bench-{N}-{k}``, schedule ``bench``, increasing
``due``). What is timed (``time.perf_counter``) is ``service.handle`` of that tick alone: the
handler builds the target (returns window, risk model, the cvxpy/Clarabel solve, the
risk limits), plans the orders and publishes the TargetPortfolio and every OrderRequest before it
returns, so its wall time is the latency from the tick to the last order published. After each
call the bus is read back to check it: one TargetPortfolio of that id, every order of that id
published, none waiting, the open orders exactly those published. Every order is then filled at
its reference price (a Fill and a terminal OrderUpdate), so the book changes from one rebalance
to the next and the next one is not held back by open orders (one rebalance runs at a time).

The first ``--warmup`` rebalances of each size are not timed into the percentiles; the first of
them builds and compiles the cvxpy problem of that shape, reported alone as ``cold_ms_<N>``.
Then ``--samples`` timed rebalances: p50 and p99 in ms (``numpy.percentile``, linear; with 30
samples p99 is close to the maximum). Garbage collection stays on, as in the service.

Breakdown (medians over the timed samples, measured without changing the code: the service's
``targets.build`` and ``targets.optimiser.solve`` are wrapped on the instance by a timer):
``build_p50_ms_<N>`` (returns to limited weights: risk model, optimiser, limits),
``solve_p50_ms_<N>`` (``PortfolioOptimiser.solve``' own ``solve_ms``, also the ``solve_ms`` of
the ``rebalance.completed`` log: QR of the returns, parameters, cvxpy's canonicalisation and the
solver) and ``solver_p50_ms_<N>`` (the solver alone, cvxpy's ``solver_stats.solve_time``); the
rest of the handler (order plan, events, publishing, logging) is the handler time less build.
Logging is configured as the service runs it (``configure_logging``: JSON at info), into
/dev/null, so its cost is counted. Not counted: under a ServiceRunner the events are published by
the commit that follows the handler, with the state snapshot (``commit_each_message``); the
snapshot's encoding is timed apart, after each timed call, as ``state_p50_ms_<N>``.

Targets (the issue): p50 < 20 ms for 20 assets and < 200 ms for 500 assets on this CPU. The
1-minute load average at the start and end is recorded (a shared machine).

Writes benchmarks/results/rebalance.json (``--out``).

    python benchmarks/rebalance.py [--sizes 20 100 500] [--samples 30] [--warmup 3] [--seed 7]
        [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvxpy as cp  # noqa: E402
import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import structlog  # noqa: E402

from engine.bus import MemoryBus  # noqa: E402
from engine.clock import SimulatedClock  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.data.synthetic import synthetic_panel  # noqa: E402
from engine.events import (  # noqa: E402
    BarSet,
    Fill,
    OrderRequest,
    OrderUpdate,
    RebalanceDue,
    Signal,
    TargetPortfolio,
    make_event,
)
from engine.logging import configure_logging  # noqa: E402
from services.daemons.rebalance import RebalanceService  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rebalance.json"
SIZES = (20, 100, 500)
TARGETS_MS = {20: 20.0, 500: 200.0}  # p50, from the issue
T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
SCHEDULE = "bench"
EXTRA_HISTORY = 10  # bars beyond the longest window the service keeps


# --------------------------------------------------------------------------------------- data


class Market:
    """Daily BarSets of a seeded synthetic market of ``n_assets`` assets."""

    def __init__(self, n_assets: int, n_bars: int, seed: int) -> None:
        panel = synthetic_panel(n_assets, n_bars, seed=seed, timeframe="1D")
        self.symbols = panel.symbols
        self.n_bars = n_bars
        self._columns = [panel.open, panel.high, panel.low, panel.close, panel.volume]

    def close_time(self, i: int) -> datetime:
        return T0 + (i + 1) * DAY

    def bars(self, i: int) -> BarSet:
        open_, high, low, close, volume = (tuple(column[i].tolist()) for column in self._columns)
        return BarSet(
            timeframe="1d",
            bar_open=T0 + i * DAY,
            symbols=self.symbols,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
        )


def fill(order: OrderRequest) -> Fill:
    return Fill(
        fill_id=f"{order.client_order_id}-f1",
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        price=order.reference_price,
        fee=0.0,
        fee_currency="USDT",
        executed_at=order.asof,
    )


def done(order: OrderRequest) -> OrderUpdate:
    return OrderUpdate(
        client_order_id=order.client_order_id,
        status="filled",
        filled_quantity=order.quantity,
        average_price=order.reference_price,
    )


# ------------------------------------------------------------------------------------ desk


class Desk:
    """One rebalancer fed by hand, its target building timed from outside, and a probe on what
    it publishes."""

    def __init__(self, market: Market, config: Config, seed: int) -> None:
        self.market = market
        self.clock = SimulatedClock(T0)
        self.bus = MemoryBus()
        self.service = RebalanceService(self.bus, self.clock, config.portfolio, config.risk)
        # What start() does under a runner: the solvers' libraries load before the first
        # rebalance, so the cold figure is the first build and solve, not the imports.
        self.service.targets.prepare()
        self.probe = self.bus.consumer("bench-probe", "p", ["targets", "orders"])
        self.rng = np.random.default_rng(seed)
        self.calls: dict[str, list[float]] = {"build": [], "solve": [], "solver": []}
        self.solvers: Counter[str] = Counter()
        self._shapes: list[tuple[int, int, bool]] = []
        self._wrap_targets()

    def _wrap_targets(self) -> None:
        targets = self.service.targets
        build, solve = targets.build, targets.optimiser.solve
        calls, shapes = self.calls, self._shapes

        def timed_build(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            decision = build(*args, **kwargs)
            calls["build"].append((time.perf_counter() - started) * 1e3)
            return decision

        def timed_solve(alpha: np.ndarray, risk: Any, previous: np.ndarray, settings: Any) -> Any:
            result = solve(alpha, risk, previous, settings)
            calls["solve"].append(result.solve_ms)
            # The shape of the cached problem it solved (factor rows: min(T, N), see the
            # optimiser); its solver's figures are read once the timed call is over.
            shapes.append((len(alpha), min(risk.loadings.shape), settings.long_only))
            return result

        targets.build = timed_build  # type: ignore[method-assign]
        targets.optimiser.solve = timed_solve  # type: ignore[method-assign]

    def _read_solver_stats(self) -> None:
        """The solver's own figures for the solves since the last call (cvxpy's
        ``solver_stats`` of the cached problem; one solve per rebalance)."""
        optimiser = self.service.targets.optimiser
        for shape in self._shapes:
            stats = optimiser.problem(*shape).solver_stats
            if stats is not None:
                self.solvers[stats.solver_name] += 1
                if stats.solve_time is not None:
                    self.calls["solver"].append(stats.solve_time * 1e3)
        self._shapes.clear()

    def send(self, payload: Any, when: datetime, source: str) -> None:
        self.service.handle(make_event(payload, source=source, ts=when))

    def send_bar(self, i: int) -> None:
        when = self.market.close_time(i)
        self.clock.advance_to(when)
        self.send(self.market.bars(i), when, "market-data")

    def published(self) -> tuple[list[TargetPortfolio], list[OrderRequest]]:
        deliveries = self.probe.read(100_000)
        self.probe.ack(deliveries)
        payloads = [d.event.payload for d in deliveries]
        targets = [p for p in payloads if isinstance(p, TargetPortfolio)]
        orders = [p for p in payloads if isinstance(p, OrderRequest)]
        return targets, orders

    def rebalance(self, i: int, k: int) -> dict[str, Any]:
        """Bar ``i``, its signal, then the timed tick; checks what went out and fills it."""
        self.send_bar(i)
        when = self.market.close_time(i)
        scores = self.rng.standard_normal(len(self.market.symbols))
        signal = Signal(
            asof=when,
            model="bench",
            factor_weights={"bench": 1.0},
            symbols=self.market.symbols,
            scores=tuple(scores.tolist()),
        )
        self.send(signal, when, "signal")
        n = len(self.market.symbols)
        rebalance_id = f"rb-bench-{n}-{k}"
        tick = RebalanceDue(
            rebalance_id=rebalance_id, schedule=SCHEDULE, due=when, decision_time=when
        )
        event = make_event(tick, source="scheduler", ts=when)
        self.published()  # drop what the bar and the signal published
        calls_before = {name: len(values) for name, values in self.calls.items()}

        started = time.perf_counter()
        self.service.handle(event)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self._read_solver_stats()

        targets, orders = self.published()
        service = self.service
        if [t.rebalance_id for t in targets] != [rebalance_id]:
            raise RuntimeError(f"{rebalance_id}: published targets {targets!r}")
        if any(o.rebalance_id != rebalance_id for o in orders):
            raise RuntimeError(f"{rebalance_id}: an order of another rebalance was published")
        if service.pending or set(service.open_orders) != {o.client_order_id for o in orders}:
            raise RuntimeError(
                f"{rebalance_id}: not every order was published by the handler "
                f"(waiting {len(service.pending)}, open {len(service.open_orders)}, "
                f"published {len(orders)})"
            )
        state_started = time.perf_counter()
        service.snapshot_state()
        state_ms = (time.perf_counter() - state_started) * 1e3
        for order in orders:
            self.send(fill(order), when, "execution")
            self.send(done(order), when, "execution")
        if service.open_orders:
            raise RuntimeError(f"{rebalance_id}: orders still open after their fills")

        def new(name: str) -> float | None:
            values = self.calls[name][calls_before[name] :]
            return sum(values) if values else None

        return {
            "ms": elapsed_ms,
            "build_ms": new("build"),
            "solve_ms": new("solve"),
            "solver_ms": new("solver"),
            "state_ms": state_ms,
            "orders": len(orders),
            "risk_actions": targets[0].risk_actions,
        }


# ------------------------------------------------------------------------------------ bench


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 3) if present else None


def run_size(n_assets: int, config: Config, samples: int, warmup: int, seed: int) -> dict:
    history = (
        max(
            config.portfolio.covariance_window,
            config.risk.var_window,
            config.risk.reentry_trend_bars,
        )
        + EXTRA_HISTORY
    )
    market = Market(n_assets, history + warmup + samples, seed)
    desk = Desk(market, config, seed + n_assets)
    for i in range(history):
        desk.send_bar(i)
    runs = [desk.rebalance(history + k, k) for k in range(warmup + samples)]
    cold, timed = runs[0], runs[warmup:]
    ms = np.array([r["ms"] for r in timed])
    actions = Counter(a for r in timed for a in r["risk_actions"])
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "cold_ms": round(cold["ms"], 3),
        "cold_solve_ms": None if cold["solve_ms"] is None else round(cold["solve_ms"], 3),
        "build_p50_ms": median([r["build_ms"] for r in timed]),
        "solve_p50_ms": median([r["solve_ms"] for r in timed]),
        "solver_p50_ms": median([r["solver_ms"] for r in timed]),
        "state_p50_ms": median([r["state_ms"] for r in timed]),
        "orders_p50": median([r["orders"] for r in timed]),
        "risk_actions": dict(sorted(actions.items())),
        "solvers": dict(desk.solvers),
        "history_bars": history,
        "samples_ms": [round(v, 3) for v in ms.tolist()],
    }


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samples", type=int, default=30, help="timed rebalances per size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rebalances first (>= 1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--risk-model",
        choices=("ledoit-wolf", "pca"),
        help="[portfolio] risk_model (default: the product's default)",
    )
    parser.add_argument("--risk-factors", type=int, help="[portfolio] risk_factors (pca)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)
    if arguments.warmup < 1 or arguments.samples < 1:
        parser.error("--warmup and --samples must be at least 1")

    config = Config()
    chosen = {
        key: value
        for key, value in (
            ("risk_model", arguments.risk_model),
            ("risk_factors", arguments.risk_factors),
        )
        if value is not None
    }
    if chosen:
        portfolio = msgspec.structs.replace(config.portfolio, **chosen)
        config = msgspec.structs.replace(config, portfolio=portfolio)
    load_start = load()
    previous_logging = structlog.get_config()
    with open(os.devnull, "w") as sink:
        configure_logging("rebalance", "info", "json", stream=sink)
        try:
            by_size = {
                n: run_size(n, config, arguments.samples, arguments.warmup, arguments.seed)
                for n in arguments.sizes
            }
        finally:
            structlog.configure(**previous_logging)
    load_end = load()

    result: dict[str, Any] = {}
    for key in ("p50_ms", "p99_ms", "cold_ms", "build_p50_ms", "solve_p50_ms", "solver_p50_ms"):
        for n, figures in by_size.items():
            result[f"{key}_{n}"] = figures[key]
    result["targets"] = {
        f"p50_ms_{n} < {limit:g}": by_size[n]["p50_ms"] < limit
        for n, limit in TARGETS_MS.items()
        if n in by_size
    }
    result["by_size"] = {str(n): figures for n, figures in by_size.items()}
    result.update(
        samples_per_size=arguments.samples,
        warmup_per_size=arguments.warmup,
        seed=arguments.seed,
        construction=config.portfolio.construction,
        covariance_window=config.portfolio.covariance_window,
        risk_model=config.portfolio.risk_model,
        risk_factors=config.portfolio.risk_factors,
        var_window=config.risk.var_window,
        var_limit=config.risk.var_limit,
        risk_enabled=config.risk.enabled,
        solver=sorted({s for figures in by_size.values() for s in figures["solvers"]}),
        load_average_1m_start=load_start,
        load_average_1m_end=load_end,
        python=platform.python_version(),
        cvxpy=cp.__version__,
        numpy=np.__version__,
        machine=f"{platform.machine()} {os.cpu_count()} cpu",
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
    )
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{'assets':>6} {'cold':>9} {'p50':>9} {'p99':>9} {'build':>9} {'solve':>9} "
        f"{'solver':>9} {'orders':>6}  target (p50)"
    )
    for n, figures in by_size.items():
        limit = TARGETS_MS.get(n)
        verdict = (
            "-"
            if limit is None
            else f"< {limit:g} ms -> {'met' if figures['p50_ms'] < limit else 'MISSED'}"
        )
        cells = [
            figures[k]
            for k in (
                "cold_ms",
                "p50_ms",
                "p99_ms",
                "build_p50_ms",
                "solve_p50_ms",
                "solver_p50_ms",
            )
        ]
        print(
            f"{n:>6} "
            + " ".join("        -" if v is None else f"{v:9.2f}" for v in cells)
            + f" {figures['orders_p50'] or 0:6.0f}  {verdict}"
        )
    print(
        f"ms; {arguments.samples} samples per size after {arguments.warmup} warm-up; "
        f"load average {load_start} -> {load_end}; solver {', '.join(result['solver'])}; "
        f"wrote {arguments.out}"
    )
    return result


if __name__ == "__main__":
    main()

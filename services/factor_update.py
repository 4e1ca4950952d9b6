"""Factor-update service: keeps every factor current bar by bar and publishes FactorSnapshots.

Each BarSet goes into the incremental factor engine (O(assets) per bar, never a recomputation
of history). Exposures are winsorised and z-scored across assets, optionally neutralised, and
published on every bar or only at each rebalance's decision bar. A snapshot also carries how
each factor did since the previous snapshot (rank IC and quintile long-short return of the
previous exposures against the returns realised since) and market-state features. On start the
service replays the bars its group already consumed, so a restart does not begin cold.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import FactorConfig, StrategyConfig
from engine.errors import ConfigError
from engine.events import BarSet, Envelope, EventPayload, FactorSnapshot, RebalanceDue
from services.runtime import Handler, Service
from strategies.evaluation import quantile_spread, rank_ic
from strategies.factor_files import FileFactors, load_factor_file
from strategies.factors import FACTORS, IncrementalFactors
from strategies.preprocessing import preprocess

log = structlog.get_logger("services.factor_update")
_KEPT = 16
_MARKET_VOLATILITY_BARS = 20


def factor_label(factor: FactorConfig) -> str:
    """Name of a configured factor in snapshots: ``momentum_252_21``; the bare name when the
    library's defaults are used."""
    spec = FACTORS.get(factor.name)
    order = spec.parameters if spec is not None else tuple(sorted(factor.params))
    values = [str(factor.params[p]) for p in order if p in factor.params]
    return "_".join([factor.name, *values])


def resolve_factors(factors: tuple[FactorConfig, ...]) -> list[tuple[str, str, dict[str, int]]]:
    """Return ``(label, name, params)`` for each configured factor, validated against the
    library; errors name the config key."""
    if not factors:
        raise ConfigError("[strategy] factors must list at least one factor")
    out = []
    for position, factor in enumerate(factors):
        spec = FACTORS.get(factor.name)
        if spec is None:
            raise ConfigError(f"[strategy.factors[{position}]] name must be one of "
                              f"{sorted(FACTORS)}, received {factor.name!r}")
        try:
            params = spec.resolve(**factor.params)
        except ValueError as error:
            raise ConfigError(f"[strategy.factors[{position}]] params: {error}") from None
        out.append((factor_label(factor), factor.name, params))
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"[strategy] factors are listed twice: {labels}")
    return out


@dataclass
class _Computed:
    symbols: tuple[str, ...]
    raw: np.ndarray          # (F, N) engine output
    close: np.ndarray        # (N,) last close per universe member
    market: dict[str, float]


class FactorUpdateService(Service):
    """Publishes FactorSnapshots of the configured factors."""

    name = "factor-update"

    def __init__(self, bus: Bus, clock: Clock, strategy: StrategyConfig) -> None:
        self.strategy = strategy
        self.requests = resolve_factors(strategy.factors)
        self.file_factors: list[FileFactors] = [load_factor_file(path) for path in strategy.factor_files]
        known = [label for label, _, _ in self.requests] + [n for f in self.file_factors for n in f.names]
        unknown = [label for label in strategy.neutralize_against if label not in known]
        if unknown:
            raise ConfigError(f"[strategy] neutralize_against names unknown factors {unknown}; "
                              f"factors are {known}")
        self.engine: IncrementalFactors | None = None
        self.labels: tuple[str, ...] = ()
        self._neutralize: list[int] = []
        self._last_close = np.zeros(0)
        self._volume_labels: list[str] = []
        self._universe: tuple[str, ...] = ()
        self._positions: list[int] = []
        self._positions_for: tuple[str, ...] | None = None
        self._computed: OrderedDict[datetime, _Computed] = OrderedDict()
        self._previous: tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None = None
        self._waiting: list[tuple[datetime, str]] = []
        self._market_level = 1.0
        self._market_peak = 1.0
        self._market_returns: deque[float] = deque(maxlen=_MARKET_VOLATILITY_BARS)
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        if self.strategy.compute_on == "rebalance":
            return {BarSet: self.on_bars, RebalanceDue: self.on_rebalance_due}
        return {BarSet: self.on_bars}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Rebuild the factor windows from bars this service consumed before a restart."""
        window = max(FACTORS[name].window(**params) for _, name, params in self.requests)
        history = self.bus.consumed_history(self.name, BarSet.TOPIC, window + _MARKET_VOLATILITY_BARS)
        for event in history:
            assert isinstance(event.payload, BarSet)
            self._ingest(event.payload)
        if history:
            log.info("factors.warmed_up", bars=len(history),
                     last=history[-1].payload.close_time.isoformat())

    def _build_engine(self, has_volume: bool) -> None:
        requests = self.requests
        if not has_volume:
            dropped = [label for label, name, _ in requests if FACTORS[name].needs_volume]
            if dropped:
                log.warning("factors.volume_factors_off", factors=dropped,
                            reason="the bars carry no volume (close-only data)")
                requests = [r for r in requests if r[0] not in dropped]
        if not requests and not self.file_factors:
            raise ConfigError("[strategy] factors: none can run on close-only data")
        self.engine = IncrementalFactors(requests) if requests else None
        self._volume_labels = [label for label, name, _ in requests if FACTORS[name].needs_volume]
        self.labels = tuple(label for label, _, _ in requests) + tuple(
            name for f in self.file_factors for name in f.names)
        missing = [l for l in self.strategy.neutralize_against if l not in self.labels]
        if missing:
            raise ConfigError(f"[strategy] neutralize_against names unknown factors {missing}; "
                              f"factors are {list(self.labels)}")
        self._neutralize = [self.labels.index(l) for l in self.strategy.neutralize_against]

    # -- inputs ----------------------------------------------------------------------------
    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        close_time = self._ingest(bars)
        if close_time is None:
            return
        if self.strategy.compute_on == "bar":
            self._publish(close_time, event.corr, event.ts)
        elif self._waiting:
            ready = [(t, c) for t, c in self._waiting if t <= close_time]
            self._waiting = [(t, c) for t, c in self._waiting if t > close_time]
            for decision_time, corr in ready:
                self._publish(decision_time, corr, event.ts)

    def on_rebalance_due(self, event: Envelope) -> None:
        tick = event.payload
        assert isinstance(tick, RebalanceDue)
        last = next(reversed(self._computed), None)
        if last is None or last < tick.decision_time:
            self._waiting.append((tick.decision_time, event.corr))
        else:
            self._publish(tick.decision_time, event.corr, event.ts)

    # -- computation -----------------------------------------------------------------------
    def _ingest(self, bars: BarSet) -> datetime | None:
        close_time = bars.close_time
        if self._computed and close_time <= next(reversed(self._computed)):
            return None  # already in the windows (a replayed bar after a restart)
        if self.engine is None and not self.labels:
            self._build_engine(bars.volume is not None)
        volume = bars.volume
        if volume is None and self._volume_labels:
            volume = (math.nan,) * len(bars.symbols)  # a bar without volume: volume factors NaN
        if self.engine is not None:
            raw = self.engine.update(bars.symbols, bars.open, bars.high, bars.low, bars.close, volume)
            if len(self._universe) != len(self.engine.symbols):  # the universe only grows
                self._universe = tuple(self.engine.symbols)
            symbols = self._universe
        else:
            raw, symbols = np.zeros((0, len(bars.symbols))), bars.symbols
        if self.file_factors:
            extra = [f.values_at(bars.bar_open, symbols) for f in self.file_factors]
            raw = np.vstack([raw, *extra])
        previous, close = self._update_closes(symbols, bars)
        self._computed[close_time] = _Computed(symbols, raw, close, self._market_state(previous, close))
        while len(self._computed) > _KEPT:
            self._computed.popitem(last=False)
        return close_time

    def _update_closes(self, symbols: tuple[str, ...], bars: BarSet) -> tuple[np.ndarray, np.ndarray]:
        # Last known close per universe member, before and after this bar.
        previous = self._last_close
        if len(previous) != len(symbols):
            previous = np.full(len(symbols), np.nan)
            previous[:len(self._last_close)] = self._last_close
        if bars.symbols is symbols or bars.symbols == symbols:
            current = np.array(bars.close, dtype=float)
        else:
            if bars.symbols is not self._positions_for:
                position = {s: i for i, s in enumerate(symbols)}
                self._positions = [position[s] for s in bars.symbols]
                self._positions_for = bars.symbols
            current = previous.copy()
            current[self._positions] = bars.close
        self._last_close = current
        return previous, current

    def _market_state(self, previous: np.ndarray, close: np.ndarray) -> dict[str, float]:
        # The equal-weight universe: its last return, recent volatility, drawdown and breadth.
        with np.errstate(invalid="ignore", divide="ignore"):
            returns = close / previous - 1.0
        valid = returns[np.isfinite(returns)]
        market_return = float(valid.mean()) if len(valid) else 0.0
        self._market_level *= 1.0 + market_return
        self._market_peak = max(self._market_peak, self._market_level)
        recent = self._market_returns
        recent.append(market_return)
        volatility = 0.0
        if len(recent) > 1:  # (statistics.stdev is exact but ~100x slower: it uses Fractions)
            mean = sum(recent) / len(recent)
            volatility = math.sqrt(sum((r - mean) ** 2 for r in recent) / (len(recent) - 1))
        return {
            "market_return": market_return,
            "market_volatility": volatility,
            "market_drawdown": 1.0 - self._market_level / self._market_peak,
            "breadth": float((valid > 0).mean()) if len(valid) else 0.0,
            "assets": float(len(valid)),
        }

    def _performance(self, exposures: np.ndarray, close: np.ndarray) -> tuple[dict, dict]:
        # How the previous snapshot's exposures did against the returns realised since.
        if self._previous is None:
            return dict.fromkeys(self.labels), dict.fromkeys(self.labels)
        previous_exposures, previous_close, _ = self._previous
        width = previous_exposures.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            realised = close[:width] / previous_close[:width] - 1.0
        ic = rank_ic(previous_exposures, np.broadcast_to(realised, previous_exposures.shape))
        spread = quantile_spread(previous_exposures, np.broadcast_to(realised, previous_exposures.shape))
        as_dict = lambda values: {l: (None if math.isnan(v) else float(v))  # noqa: E731
                                  for l, v in zip(self.labels, values)}
        return as_dict(ic), as_dict(spread)

    def _publish(self, asof: datetime, corr: str, ts: datetime) -> None:
        computed = self._computed.get(asof)
        if computed is None:
            log.warning("factors.decision_bar_missing", asof=asof.isoformat(), corr=corr)
            return
        winsorize = None if self.strategy.winsorize == "none" else self.strategy.winsorize
        exposures = preprocess(computed.raw, winsorize=winsorize,
                               neutralize_against=self._neutralize) if len(computed.raw) else computed.raw
        factor_ic, factor_returns = self._performance(exposures, computed.close)
        self._previous = (exposures, computed.close.copy(), computed.symbols)
        snapshot = FactorSnapshot(
            asof=asof,
            symbols=computed.symbols,
            factor_names=self.labels,
            exposures=tuple(tuple(row) for row in exposures.tolist()),
            factor_ic=factor_ic,
            factor_returns=factor_returns,
            market_state=computed.market,
        )
        self.emit([snapshot], corr=corr, ts=ts)

"""Factor-update service: keeps every factor current bar by bar and publishes FactorSnapshots.

Each BarSet goes into the incremental factor engine (O(assets) per bar, never a recomputation
of history). A BarBlock (a backtest's quiet run of bars) goes in with matrix operations when
snapshots are due at rebalances only, leaving exactly the state its bars one by one would;
otherwise its bars go in one by one. Exposures are winsorised and z-scored across assets,
optionally neutralised, and published on every bar or only at each rebalance's decision bar.
A snapshot also carries how each factor did since the previous snapshot (rank IC and quintile
long-short return of the previous exposures against the returns realised since) and
market-state features. On start the service replays the bars its group already consumed, so
a restart does not begin cold.
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
from engine.data.fill import carry_forward
from engine.errors import ConfigError
from engine.events import BarBlock, BarSet, Envelope, EventPayload, FactorSnapshot, RebalanceDue
from services.runtime.loop import Handler, Service
from strategies.evaluation import quantile_spread, rank_ic
from strategies.factor_files import FileFactors, load_factor_file
from strategies.factors import FACTORS, IncrementalFactors
from strategies.preprocessing import preprocess

log = structlog.get_logger("services.daemons.factor_update")
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
            raise ConfigError(
                f"[strategy.factors[{position}]] name must be one of "
                f"{sorted(FACTORS)}, received {factor.name!r}"
            )
        try:
            params = spec.resolve(**factor.params)
        except ValueError as error:
            raise ConfigError(f"[strategy.factors[{position}]] params: {error}") from None
        out.append((factor_label(factor), factor.name, params))
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"[strategy] factors are listed twice: {labels}")
    return out


def market_returns(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (bars, assets) returns: the mean of the finite ones (0 with none), the share
    of them above 0, and their count.

    A masked sum rather than a mean of the finite entries: the same arithmetic for one row
    and for a block of rows, so both give identical numbers.
    """
    finite = np.isfinite(returns)
    count = finite.sum(axis=1)
    total = np.where(finite, returns, 0.0).sum(axis=1)
    positive = (finite & (returns > 0)).sum(axis=1)
    safe = np.maximum(count, 1)
    return (
        np.where(count > 0, total / safe, 0.0),
        np.where(count > 0, positive / safe, 0.0),
        count,
    )


@dataclass
class _Computed:
    symbols: tuple[str, ...]
    raw: np.ndarray  # (F, N) engine output
    close: np.ndarray  # (N,) last close per universe member
    market: dict[str, float]


class FactorUpdateService(Service):
    """Publishes FactorSnapshots of the configured factors."""

    name = "factor-update"

    def __init__(self, bus: Bus, clock: Clock, strategy: StrategyConfig) -> None:
        self.strategy = strategy
        self.requests = resolve_factors(strategy.factors)
        self.file_factors: list[FileFactors] = [
            load_factor_file(path) for path in strategy.factor_files
        ]
        known = [label for label, _, _ in self.requests] + [
            n for f in self.file_factors for n in f.names
        ]
        unknown = [label for label in strategy.neutralize_against if label not in known]
        if unknown:
            raise ConfigError(
                f"[strategy] neutralize_against names unknown factors {unknown}; "
                f"factors are {known}"
            )
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
            return {
                BarSet: self.on_bars,
                BarBlock: self.on_block,
                RebalanceDue: self.on_rebalance_due,
            }
        return {BarSet: self.on_bars, BarBlock: self.on_block}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Rebuild the factor windows from bars this service consumed before a restart."""
        window = max(FACTORS[name].window(**params) for _, name, params in self.requests)
        history = self.bus.consumed_history(
            self.name, BarSet.TOPIC, window + _MARKET_VOLATILITY_BARS
        )
        for event in history:
            payload = event.payload
            assert isinstance(payload, (BarSet, BarBlock))
            for bars in [payload] if isinstance(payload, BarSet) else payload.rows():
                self._ingest(bars)
        if history:
            log.info(
                "factors.warmed_up",
                bars=len(history),
                last=history[-1].payload.close_time.isoformat(),
            )

    def _build_engine(self, has_volume: bool) -> None:
        requests = self.requests
        if not has_volume:
            dropped = [label for label, name, _ in requests if FACTORS[name].needs_volume]
            if dropped:
                log.warning(
                    "factors.volume_factors_off",
                    factors=dropped,
                    reason="the bars carry no volume (close-only data)",
                )
                requests = [r for r in requests if r[0] not in dropped]
        if not requests and not self.file_factors:
            raise ConfigError("[strategy] factors: none can run on close-only data")
        self.engine = IncrementalFactors(requests) if requests else None
        self._volume_labels = [label for label, name, _ in requests if FACTORS[name].needs_volume]
        self.labels = tuple(label for label, _, _ in requests) + tuple(
            name for f in self.file_factors for name in f.names
        )
        missing = [label for label in self.strategy.neutralize_against if label not in self.labels]
        if missing:
            raise ConfigError(
                f"[strategy] neutralize_against names unknown factors {missing}; "
                f"factors are {list(self.labels)}"
            )
        self._neutralize = [self.labels.index(label) for label in self.strategy.neutralize_against]

    # -- inputs ----------------------------------------------------------------------------
    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        self._after_ingest(self._ingest(bars), event)

    def on_block(self, event: Envelope) -> None:
        block = event.payload
        assert isinstance(block, BarBlock)
        if self.strategy.compute_on == "bar" or self._waiting or not self.requests:
            self.handle_rows(event)  # a snapshot per bar, or a tick waits on one of them
            return
        self._after_ingest(self._ingest_block(block), event)

    def _after_ingest(self, close_time: datetime | None, event: Envelope) -> None:
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
            raw = self.engine.update(
                bars.symbols, bars.open, bars.high, bars.low, bars.close, volume
            )
            if len(self._universe) != len(self.engine.symbols):  # the universe only grows
                self._universe = tuple(self.engine.symbols)
            symbols = self._universe
        else:
            raw, symbols = np.zeros((0, len(bars.symbols))), bars.symbols
        if self.file_factors:
            extra = [f.values_at(bars.bar_open, symbols) for f in self.file_factors]
            raw = np.vstack([raw, *extra])
        previous, close = self._update_closes(symbols, bars)
        self._computed[close_time] = _Computed(
            symbols, raw, close, self._market_state(previous, close)
        )
        while len(self._computed) > _KEPT:
            self._computed.popitem(last=False)
        return close_time

    def _ingest_block(self, block: BarBlock) -> datetime | None:
        # ``_ingest`` for every bar of the block, with the factor windows, the closes and the
        # market state advanced by matrix operations; only the last bar is kept as computed.
        close = block.matrix("close")
        assert close is not None
        times = block.close_times()
        keep = ~np.isnan(close).all(axis=1)
        if self._computed:
            latest = next(reversed(self._computed))
            keep &= np.array([t > latest for t in times])  # replayed bars after a restart
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            return None
        if self.engine is None and not self.labels:
            self._build_engine(block.volume is not None)
        values = block.matrices()
        if len(rows) < len(close):
            values = {name: None if m is None else m[rows] for name, m in values.items()}
        if values["volume"] is None and self._volume_labels:
            values["volume"] = np.full_like(values["close"], np.nan)
        close = values["close"]
        assert close is not None and self.engine is not None
        width_before = len(self._universe)
        raw = self.engine.update_block(block.symbols, values)
        if len(self._universe) != len(self.engine.symbols):
            self._universe = tuple(self.engine.symbols)
        symbols = self._universe
        last_row = int(rows[-1])
        if self.file_factors:
            extra = [f.values_at(block.bar_open[last_row], symbols) for f in self.file_factors]
            raw = np.vstack([raw, *extra])
        market = self._market_state_block(symbols, block.symbols, close, width_before)
        close_time = times[last_row]
        self._computed[close_time] = _Computed(symbols, raw, self._last_close.copy(), market)
        while len(self._computed) > _KEPT:
            self._computed.popitem(last=False)
        return close_time

    def _market_state_block(
        self,
        symbols: tuple[str, ...],
        block_symbols: tuple[str, ...],
        close: np.ndarray,
        width_before: int,
    ) -> dict[str, float]:
        # The closes carried forward per universe member, then each bar's market return over
        # the universe as it was at that bar (its width decides the summation order).
        width = len(symbols)
        column = {s: i for i, s in enumerate(symbols)}
        universe_columns = np.array(
            [column[s] for s in block_symbols if s in column], dtype=np.intp
        )
        block_columns = np.array(
            [j for j, s in enumerate(block_symbols) if s in column], dtype=np.intp
        )
        before = np.full(width, np.nan)
        before[: len(self._last_close)] = self._last_close
        bars = np.full((len(close), width), np.nan)
        bars[:, universe_columns] = close[:, block_columns]
        carried = np.vstack([before, carry_forward(bars, before)])
        with np.errstate(invalid="ignore", divide="ignore"):
            returns = carried[1:] / carried[:-1] - 1.0
        if width == width_before:  # the universe did not grow during the block
            mean, breadth, count = market_returns(returns)
        else:
            # Universe width at each bar: members known before, plus those that have appeared.
            appeared = np.where(~np.isnan(bars), np.arange(width), -1).max(axis=1)
            widths = np.maximum.accumulate(np.maximum(appeared + 1, width_before))
            mean, breadth, count = (np.empty(len(close)) for _ in range(3))
            for w in np.unique(widths).tolist():
                at = widths == w
                mean[at], breadth[at], count[at] = market_returns(returns[at][:, :w])
        self._last_close = carried[-1]
        return self._advance_market(mean, float(breadth[-1]), float(count[-1]))

    def _update_closes(
        self, symbols: tuple[str, ...], bars: BarSet
    ) -> tuple[np.ndarray, np.ndarray]:
        # Last known close per universe member, before and after this bar.
        previous = self._last_close
        if len(previous) != len(symbols):
            previous = np.full(len(symbols), np.nan)
            previous[: len(self._last_close)] = self._last_close
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
        mean, breadth, count = market_returns(returns[None, :])
        return self._advance_market(mean, float(breadth[0]), float(count[0]))

    def _advance_market(
        self, returns: np.ndarray, breadth: float, assets: float
    ) -> dict[str, float]:
        # Moves the market level over bars' returns (oldest first): the state at the last.
        levels = np.multiply.accumulate(np.concatenate([[self._market_level], 1.0 + returns]))
        self._market_level = float(levels[-1])
        self._market_peak = max(self._market_peak, float(levels[1:].max()))
        recent = self._market_returns
        recent.extend(returns.tolist())
        volatility = 0.0
        if len(recent) > 1:  # (statistics.stdev is exact but ~100x slower: it uses Fractions)
            mean = sum(recent) / len(recent)
            volatility = math.sqrt(sum((r - mean) ** 2 for r in recent) / (len(recent) - 1))
        return {
            "market_return": float(returns[-1]),
            "market_volatility": volatility,
            "market_drawdown": 1.0 - self._market_level / self._market_peak,
            "breadth": breadth,
            "assets": assets,
        }

    def _performance(self, exposures: np.ndarray, close: np.ndarray) -> tuple[dict, dict, float]:
        # How the previous snapshot's exposures did against the returns realised since, and
        # the cross-sectional dispersion (standard deviation) of those returns.
        if self._previous is None:
            return dict.fromkeys(self.labels), dict.fromkeys(self.labels), 0.0
        previous_exposures, previous_close, _ = self._previous
        width = previous_exposures.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            realised = close[:width] / previous_close[:width] - 1.0
        ic = rank_ic(previous_exposures, np.broadcast_to(realised, previous_exposures.shape))
        spread = quantile_spread(
            previous_exposures, np.broadcast_to(realised, previous_exposures.shape)
        )

        def as_dict(values: np.ndarray) -> dict[str, float | None]:
            return {
                label: (None if math.isnan(value) else float(value))
                for label, value in zip(self.labels, values)
            }

        known = realised[np.isfinite(realised)]
        dispersion = float(known.std()) if len(known) > 1 else 0.0
        return as_dict(ic), as_dict(spread), dispersion

    def _publish(self, asof: datetime, corr: str, ts: datetime) -> None:
        computed = self._computed.get(asof)
        if computed is None:
            log.warning("factors.decision_bar_missing", asof=asof.isoformat(), corr=corr)
            return
        winsorize = None if self.strategy.winsorize == "none" else self.strategy.winsorize
        exposures = (
            preprocess(computed.raw, winsorize=winsorize, neutralize_against=self._neutralize)
            if len(computed.raw)
            else computed.raw
        )
        factor_ic, factor_returns, dispersion = self._performance(exposures, computed.close)
        self._previous = (exposures, computed.close.copy(), computed.symbols)
        snapshot = FactorSnapshot(
            asof=asof,
            symbols=computed.symbols,
            factor_names=self.labels,
            exposures=tuple(tuple(row) for row in exposures.tolist()),
            factor_ic=factor_ic,
            factor_returns=factor_returns,
            market_state={**computed.market, "dispersion": dispersion},
        )
        self.emit([snapshot], corr=corr, ts=ts)

"""A seeded synthetic market whose regimes are known, for checking evaluations per regime.

``deepfactor evaluate`` splits a strategy's figures by regime labelled from past data; on real
data nobody knows the true regimes, so a mislabelling rule or a strategy that fails in one regime
cannot be told apart. Here the history is a list of segments (bull, bear, high-volatility) and
each bar's log returns are

    r[t, i] = beta[i] * m[t] + s[i] . f[t] + a[t, i] + x[t, i]

with ``m[t]`` the market factor (the regime's drift and volatility), ``f[t]`` two style factors,
``a[t, i]`` a cross-sectional drift and ``x[t, i]`` idiosyncratic noise. The cross-sectional
drift, demeaned across assets so the index keeps the regime's drift, holds a persistent, slowly
changing per-asset term that pays momentum and trend in bulls (less in bears); in high
volatility it is replaced by a pull against each asset's trailing return, so past winners fall
and losers rebound (a momentum crash); and a low-volatility premium (slightly negative in bulls,
positive in bears). The idiosyncratic noise is a moving average with a negative weight on the
previous shock, strongest in high volatility, so short-term reversal pays most in turbulence.
Dispersion (idiosyncratic and style volatility) rises in bears and more in high volatility.
The same seed gives the same market, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.panel import Panel
from engine.data.synthetic import ohlcv_bars

# The names engine.evaluation.regimes labels with; not imported from there so the data layer
# does not load the evaluation package (scipy) to build bars. A test checks they agree.
BULL, BEAR, HIGH_VOLATILITY = "bull", "bear", "high-volatility"
REGIMES: tuple[str, ...] = (BULL, BEAR, HIGH_VOLATILITY)


@dataclass(frozen=True)
class RegimeSegment:
    """``bars`` consecutive bars of one ``regime`` (``"bull"``, ``"bear"`` or
    ``"high-volatility"``)."""

    regime: str
    bars: int

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(
                f"RegimeSegment: regime must be one of {', '.join(REGIMES)}, "
                f"received {self.regime!r}"
            )
        if (
            isinstance(self.bars, bool)
            or not isinstance(self.bars, (int, np.integer))
            or self.bars < 1
        ):
            raise ValueError(f"RegimeSegment: bars must be an integer >= 1, received {self.bars!r}")


# About 2,500 bars: ten years of trading days, or 6.8 calendar years of a market that trades
# every day (the panel's bars are consecutive). Lengths are loosely those of equity cycles:
# long bulls, bears of a year or so, and turbulent spells of a few months.
DEFAULT_SEGMENTS: tuple[RegimeSegment, ...] = (
    RegimeSegment(BULL, 400),
    RegimeSegment(HIGH_VOLATILITY, 120),
    RegimeSegment(BEAR, 250),
    RegimeSegment(BULL, 500),
    RegimeSegment(HIGH_VOLATILITY, 90),
    RegimeSegment(BEAR, 300),
    RegimeSegment(BULL, 350),
    RegimeSegment(HIGH_VOLATILITY, 150),
    RegimeSegment(BEAR, 200),
    RegimeSegment(BULL, 140),
)


@dataclass(frozen=True)
class _RegimeParameters:
    # Annualised market drift and volatility of the log market factor m[t].
    drift: float
    volatility: float
    # Multiplies the idiosyncratic and style volatility: dispersion rises in turbulence.
    dispersion: float
    # Sign and size of the persistent per-asset drift: > 0 momentum and trend pay.
    momentum: float
    # Annualised drift per unit of an asset's trailing-return score: < 0 makes past winners
    # fall and past losers rebound, the momentum crash of turbulent markets.
    winner_reversal: float
    # Annualised premium per unit of (negative) volatility score: > 0 low volatility pays.
    low_volatility: float
    # Weight of the previous idiosyncratic shock in this bar's: < 0 gives short-term reversal.
    reversal: float


_PARAMETERS: dict[str, _RegimeParameters] = {
    BULL: _RegimeParameters(0.40, 0.18, 1.0, 1.0, 0.0, -0.03, -0.03),
    BEAR: _RegimeParameters(-0.35, 0.24, 1.3, 0.4, 0.0, 0.12, -0.08),
    HIGH_VOLATILITY: _RegimeParameters(-0.10, 0.50, 2.0, 0.0, -0.5, 0.08, -0.18),
}
_ALPHA_VOLATILITY = 0.35  # cross-sectional std of the annualised persistent drift
_ALPHA_HALF_LIFE_DAYS = 180.0  # how long an asset's persistent drift lasts
_IDIO_VOLATILITY = 0.35  # annualised idiosyncratic volatility of a typical asset
_STYLE_VOLATILITY = 0.08  # annualised volatility of each style factor
_WINNER_LOOKBACK = 120  # bars of trailing return that make an asset a winner or a loser


@dataclass(frozen=True, eq=False)
class RegimeMarket:
    """A synthetic ``panel``, the true ``regimes`` of its bars and the generating ``rule``.

    ``regimes`` is categorical over ``REGIMES``, indexed by the bars' close times (a UTC
    ``DatetimeIndex`` named ``timestamp``), as ``engine.evaluation.regimes`` labels them:
    a bar's regime is the one its return was drawn in.
    """

    panel: Panel
    regimes: pd.Series
    rule: str


def _owner_error(argument: str, expected: str, received: object) -> ValueError:
    return ValueError(f"regime_panel: {argument} must be {expected}, received {received!r}")


def _timeframe_step(timeframe: str) -> np.timedelta64:
    # numpy's units, plus ccxt's lower-case "1d" and "1w"; "m" is minutes in both.
    count, unit = timeframe[:-1], {"d": "D", "w": "W"}.get(timeframe[-1:], timeframe[-1:])
    if unit not in ("s", "m", "h", "D", "W") or not (count == "" or count.isdigit()):
        raise _owner_error("timeframe", "a count and a unit (s, m, h, D or W) like '1D'", timeframe)
    step = np.timedelta64(np.timedelta64(1, unit) * int(count or 1), "ms")
    if step <= np.timedelta64(0, "ms"):
        raise _owner_error("timeframe", "a positive duration", timeframe)
    return step


def _validated_segments(segments: Sequence[RegimeSegment]) -> tuple[RegimeSegment, ...]:
    if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence):
        raise _owner_error("segments", "a sequence of RegimeSegment", segments)
    if not segments:
        raise _owner_error("segments", "a non-empty sequence of RegimeSegment", segments)
    for position, segment in enumerate(segments):
        if not isinstance(segment, RegimeSegment):
            raise _owner_error(f"segments[{position}]", "a RegimeSegment", segment)
    return tuple(segments)


def _zscore(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def _reverse_winners(log_returns: np.ndarray, reversal: np.ndarray) -> None:
    # Each bar's drift depends on the returns before it, so this runs bar by bar, in place.
    # The score is demeaned across assets, so it moves assets against each other, not the index.
    cumulative = np.zeros(log_returns.shape[1])
    history = [cumulative]
    for t in range(len(log_returns)):
        if reversal[t] != 0.0 and t >= _WINNER_LOOKBACK // 4:
            trailing = cumulative - history[max(0, t - _WINNER_LOOKBACK)]
            log_returns[t] += reversal[t] * _zscore(trailing)
        cumulative = cumulative + log_returns[t]
        history.append(cumulative)


def regime_panel(
    n_assets: int = 30,
    segments: Sequence[RegimeSegment] = DEFAULT_SEGMENTS,
    *,
    seed: int = 7,
    start: str = "2014-01-01",
    timeframe: str = "1D",
    symbol_suffix: str = "/USDT",
) -> RegimeMarket:
    """Return a market of ``n_assets`` assets whose regimes follow ``segments`` in order.

    Parameters
    ----------
    n_assets
        Number of assets, named ``SYN000`` ... plus ``symbol_suffix``.
    segments
        The history: each segment draws ``bars`` consecutive bars in its regime.
    seed
        Seeds every draw; the same arguments give the same market, bit for bit.
    start
        Open time of the first bar (UTC).
    timeframe
        Bar length, a count and a unit (``s``, ``m``, ``h``, ``D``, ``W``): ``"1D"``, ``"4h"``.
        Annual drifts and volatilities are scaled to it over a 365-day year.
    symbol_suffix
        Appended to every symbol, ``"/USDT"`` for ccxt-style names.

    Raises
    ------
    ValueError
        Naming the argument, when one is out of range or of the wrong type.
    """
    if isinstance(n_assets, bool) or not isinstance(n_assets, (int, np.integer)) or n_assets < 1:
        raise _owner_error("n_assets", "an integer >= 1", n_assets)
    segments = _validated_segments(segments)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise _owner_error("seed", "an integer >= 0", seed)
    try:
        first_open = np.datetime64(start, "ms") if isinstance(start, str) else None
    except ValueError:
        first_open = None
    if first_open is None or np.isnat(first_open):
        raise _owner_error("start", "an ISO date or time such as '2014-01-01'", start)
    if not isinstance(timeframe, str):
        raise _owner_error("timeframe", "a string such as '1D'", timeframe)
    step = _timeframe_step(timeframe)
    if not isinstance(symbol_suffix, str):
        raise _owner_error("symbol_suffix", "a string", symbol_suffix)

    dt = float(step / np.timedelta64(365, "D"))
    root_dt = np.sqrt(dt)
    names = np.array([segment.regime for segment in segments])
    bar_regime = np.repeat(names, [int(segment.bars) for segment in segments])
    n_bars = len(bar_regime)

    def per_bar(field: str) -> np.ndarray:
        values = {regime: getattr(_PARAMETERS[regime], field) for regime in REGIMES}
        return np.array([values[regime] for regime in bar_regime])[:, None]

    rng = np.random.default_rng(int(seed))
    # Betas average exactly 1 so the equal-weight index carries the regime's drift.
    beta = np.clip(rng.normal(1.0, 0.3, n_assets), 0.3, None)
    beta = beta / beta.mean()
    style_loadings = rng.normal(0.0, 1.0, (n_assets, 2))
    idio_volatility = rng.uniform(0.5, 1.5, n_assets) * _IDIO_VOLATILITY * root_dt
    # The low-volatility score: high for the calm, low-beta assets.
    calm = -_zscore(_zscore(idio_volatility) + _zscore(beta))

    market = per_bar("drift") * dt + per_bar("volatility") * root_dt * rng.standard_normal(
        (n_bars, 1)
    )
    dispersion = per_bar("dispersion")
    styles = rng.standard_normal((n_bars, 2)) * _STYLE_VOLATILITY * root_dt * dispersion

    # Persistent per-asset drift: an AR(1) across bars, demeaned across assets so it moves
    # assets against each other and never the index.
    persistence = 0.5 ** (dt * 365.0 / _ALPHA_HALF_LIFE_DAYS)
    innovations = rng.standard_normal((n_bars, n_assets)) * np.sqrt(1.0 - persistence**2)
    alpha = np.empty((n_bars, n_assets))
    state = rng.standard_normal(n_assets)
    for t in range(n_bars):
        state = persistence * state + innovations[t]
        alpha[t] = state
    alpha = (alpha - alpha.mean(axis=1, keepdims=True)) * _ALPHA_VOLATILITY * dt
    cross_section = per_bar("momentum") * alpha + per_bar("low_volatility") * calm * dt

    shocks = rng.standard_normal((n_bars + 1, n_assets)) * idio_volatility
    noise = (shocks[1:] + per_bar("reversal") * shocks[:-1]) * dispersion
    log_returns = beta * market + styles @ style_loadings.T + cross_section + noise
    _reverse_winners(log_returns, per_bar("winner_reversal")[:, 0] * dt)

    open_, high, low, close, volume = ohlcv_bars(rng, log_returns, idio_volatility * dispersion)

    panel = Panel(
        bar_open=first_open + step * np.arange(n_bars),
        symbols=tuple(f"SYN{i:03d}{symbol_suffix}" for i in range(int(n_assets))),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        timeframe=step,
        source=f"regime_market(seed={seed})",
    )
    regimes = pd.Series(
        pd.Categorical(bar_regime, categories=REGIMES),
        index=pd.DatetimeIndex(pd.to_datetime(panel.close_time, utc=True), name="timestamp"),
        name="regime",
    )
    counts = ", ".join(f"{regime} {int((bar_regime == regime).sum())}" for regime in REGIMES)
    rule = (
        f"Seeded synthetic market (seed {seed}) of {n_assets} assets over {n_bars} bars in "
        f"{len(segments)} known regime segments ({counts} bars), whose log returns are "
        "beta times a market factor with the regime's drift and volatility (bull "
        f"{_PARAMETERS[BULL].drift:+.0%}/{_PARAMETERS[BULL].volatility:.0%}, bear "
        f"{_PARAMETERS[BEAR].drift:+.0%}/{_PARAMETERS[BEAR].volatility:.0%}, high-volatility "
        f"{_PARAMETERS[HIGH_VOLATILITY].drift:+.0%}/"
        f"{_PARAMETERS[HIGH_VOLATILITY].volatility:.0%} a year) plus style factors, a "
        "persistent per-asset drift that pays momentum in bulls and bears, a pull against past "
        "winners in high volatility, a low-volatility premium in bears, and idiosyncratic noise "
        "with short-term reversal."
    )
    return RegimeMarket(panel=panel, regimes=regimes, rule=rule)


def regimes_path(path: str | Path) -> Path:
    """Return where ``write_regime_market`` puts the labels of the panel file ``path``:
    ``market.csv.gz`` -> ``market.regimes.csv``, in the same folder."""
    path = Path(path)
    name = path.name
    for suffix in (".csv.gz", ".csv", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.regimes.csv")


def write_regime_market(market: RegimeMarket, path: str | Path) -> tuple[Path, Path]:
    """Write ``market``'s panel to ``path`` and its true regimes beside it; return both paths.

    The panel is a long OHLCV CSV (timestamp as the bar's open time in ISO-8601 UTC, symbol,
    open, high, low, close, volume), gzip-compressed when ``path`` ends with ``.gz``, which
    ``engine.data.files.load_panel`` reads back. The regimes go to ``regimes_path(path)`` as
    ``timestamp,regime`` rows, stamped with each bar's close time like ``market.regimes``.
    Floats are written with full precision, so the panel round-trips exactly.
    """
    path = Path(path)
    if not path.name.lower().endswith((".csv", ".csv.gz", ".gz")):
        raise ValueError(
            f"write_regime_market: path must end with .csv, .csv.gz or .gz, received {str(path)!r}"
        )
    panel = market.panel
    n_bars, n_assets = panel.close.shape
    stamps = np.datetime_as_string(panel.bar_open, unit="s", timezone="UTC")
    columns = {
        "timestamp": np.repeat(stamps, n_assets),
        "symbol": np.tile(np.array(panel.symbols, dtype=object), n_bars),
        "open": panel.open.ravel(),
        "high": panel.high.ravel(),
        "low": panel.low.ravel(),
        "close": panel.close.ravel(),
    }
    if panel.volume is not None:
        columns["volume"] = panel.volume.ravel()
    path.parent.mkdir(parents=True, exist_ok=True)
    # float_format=None writes repr(), the shortest text that parses back to the same float.
    pd.DataFrame(columns).to_csv(path, index=False, compression="infer")
    labels_path = regimes_path(path)
    labels = market.regimes
    pd.DataFrame(
        {
            "timestamp": labels.index.map(pd.Timestamp.isoformat),
            "regime": labels.astype(str).to_numpy(),
        }
    ).to_csv(labels_path, index=False)
    return path, labels_path


def load_regimes(path: str | Path) -> pd.Series:
    """Read a ``timestamp,regime`` file written by ``write_regime_market`` into a categorical
    Series over ``REGIMES``, indexed by UTC close times like ``RegimeMarket.regimes``."""
    frame = pd.read_csv(path)
    return pd.Series(
        pd.Categorical(frame["regime"], categories=REGIMES),
        index=pd.DatetimeIndex(
            pd.to_datetime(frame["timestamp"], utc=True), name="timestamp"
        ).as_unit("ms"),
        name="regime",
    )

"""A seeded synthetic multi-asset market with a factor structure, for demos, tests and benchmarks.

Log returns are ``r[t, i] = mu[i] + beta[i] . f[t] + sigma_i[t] * e[t, i]``: assets load on a
market factor and two style factors (so cross-sectional effects can exist), drifts persist per
asset (so momentum is not pure noise), volatility switches between a calm and a stressed regime,
and rare crash days hit the market factor. The same seed gives the same market, bit for bit.
"""

from __future__ import annotations

import numpy as np

from engine.data.panel import Panel


def synthetic_panel(
    n_assets: int = 20,
    n_bars: int = 500,
    *,
    seed: int = 7,
    start: str = "2020-01-01",
    timeframe: str = "1D",
    annual_drift: float = 0.05,
    annual_volatility: float = 0.35,
    crash_probability: float = 0.002,
    symbol_suffix: str = "/USDT",
) -> Panel:
    """Return a panel of ``n_bars`` bars for ``n_assets`` synthetic assets."""
    if n_assets < 1 or n_bars < 1:
        raise ValueError(
            f"synthetic market needs n_assets >= 1 and n_bars >= 1, "
            f"received {n_assets} and {n_bars}"
        )
    rng = np.random.default_rng(seed)
    step = np.timedelta64(np.timedelta64(1, timeframe[-1]) * int(timeframe[:-1] or 1), "ms")
    periods_per_year = np.timedelta64(365, "D") / step
    dt = 1.0 / periods_per_year

    loadings = np.column_stack(
        [
            rng.normal(1.0, 0.3, n_assets),  # market beta
            rng.normal(0.0, 0.5, n_assets),  # style 1
            rng.normal(0.0, 0.5, n_assets),  # style 2
        ]
    )
    factor_vol = np.array([0.6, 0.25, 0.25]) * annual_volatility * np.sqrt(dt)
    idio_vol = rng.uniform(0.5, 1.2, n_assets) * annual_volatility * np.sqrt(dt)
    drift = (annual_drift + rng.normal(0.0, 0.15, n_assets)) * dt

    # Two-state volatility regime: calm (x1) and stressed (x2.5), sticky.
    stressed = np.empty(n_bars, dtype=bool)
    state = False
    switch = rng.random(n_bars)
    for t in range(n_bars):
        state = (switch[t] < 0.02) if not state else (switch[t] > 0.05)
        stressed[t] = state
    regime = np.where(stressed, 2.5, 1.0)[:, None]

    factors = rng.standard_normal((n_bars, 3)) * factor_vol * regime
    crashes = rng.random(n_bars) < crash_probability
    factors[crashes, 0] -= rng.uniform(0.08, 0.2, crashes.sum())
    noise = rng.standard_normal((n_bars, n_assets)) * idio_vol * regime
    log_returns = drift + factors @ loadings.T + noise

    open_, high, low, close, volume = ohlcv_bars(rng, log_returns, idio_vol * regime)

    bar_open = np.datetime64(start, "ms") + step * np.arange(n_bars)
    symbols = tuple(f"SYN{i:03d}{symbol_suffix}" for i in range(n_assets))
    return Panel(
        bar_open=bar_open,
        symbols=symbols,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        timeframe=step,
        source=f"synthetic(seed={seed})",
    )


def ohlcv_bars(
    rng: np.random.Generator, log_returns: np.ndarray, typical: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open, high, low, close and volume bars (each (T, N)) around ``log_returns`` (T, N).

    Closes compound the log returns from a random first price; the open gaps from the previous
    close, and the high and low reach beyond open and close, by noise of ``typical`` scale
    (the per-bar volatility, broadcast over bars and assets); volume grows with the size of
    the move. Draws from ``rng`` in a fixed order, so a seeded market stays the same.
    """
    n_bars, n_assets = log_returns.shape
    first = rng.uniform(5.0, 500.0, n_assets)
    close = first * np.exp(np.cumsum(log_returns, axis=0))
    previous = np.vstack([first, close[:-1]])
    open_ = previous * np.exp(rng.standard_normal((n_bars, n_assets)) * 0.2 * typical)
    high = np.maximum(open_, close) * np.exp(
        np.abs(rng.standard_normal((n_bars, n_assets))) * 0.5 * typical
    )
    low = np.minimum(open_, close) * np.exp(
        -np.abs(rng.standard_normal((n_bars, n_assets))) * 0.5 * typical
    )
    turnover = rng.lognormal(mean=0.0, sigma=0.4, size=(n_bars, n_assets)) * (
        1 + 20 * np.abs(log_returns)
    )
    volume = turnover * rng.uniform(1e4, 1e6, n_assets) / close
    return open_, high, low, close, volume

"""Risk and performance measures of return series and equity curves.

VaR and expected shortfall are positive loss fractions of equity, floored at zero, so a limit
compares them with a positive budget. Every VaR/ES method is positively homogeneous in the
returns while the floor does not bind (``VaR(k * r) == k * VaR(r)`` for ``k > 0``): scaling a
portfolio by ``k`` scales its risk by ``k``, which is what lets a limit scale positions back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal, stats

VarMethod = Literal["historical", "filtered-historical", "parametric", "cornish-fisher"]
VAR_METHODS: tuple[str, ...] = ("historical", "filtered-historical", "parametric", "cornish-fisher")
# RiskMetrics' decay for daily returns (J.P. Morgan, 1996): the weight of a squared return in
# the volatility forecast halves in about 11 bars.
EWMA_DECAY = 0.94


def _check(owner: str, confidence: float, horizon: int) -> None:
    if not 0.0 < confidence < 1.0:  # also rejects NaN
        raise ValueError(f"{owner}: confidence must be in (0, 1), received {confidence!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"{owner}: horizon must be an integer >= 1, received {horizon!r}")


def _finite(returns: np.ndarray) -> np.ndarray:
    values = np.asarray(returns, dtype=float)
    return values[~np.isnan(values)]


def horizon_returns(returns: np.ndarray, horizon: int) -> np.ndarray:
    """Return the overlapping sums of ``horizon`` consecutive per-period simple returns.

    Sums rather than compounded products keep historical VaR over a horizon homogeneous in the
    returns and consistent with the ``mean * h`` drift of the parametric methods. Overlapping
    windows use every observation; they are serially dependent, which a quantile does not mind.
    """
    _check("horizon_returns", 0.5, horizon)
    values = np.asarray(returns, dtype=float)
    if horizon == 1:
        return values
    if len(values) < horizon:
        return np.empty(0)
    return sliding_window_view(values, horizon).sum(axis=1)


def historical_var(returns: np.ndarray, confidence: float, horizon: int = 1) -> float:
    """Return minus the ``1 - confidence`` quantile of the (horizon) returns.

    ``np.quantile``'s default linear interpolation, as ``engine.metrics.historical_var`` has
    always used, so the figures in existing ``summary.json`` files keep their meaning.
    """
    _check("historical_var", confidence, horizon)
    sample = horizon_returns(_finite(returns), horizon)
    if len(sample) == 0:
        return 0.0
    return float(max(0.0, -np.quantile(sample, 1.0 - confidence)))


def volatility_scaled(returns: np.ndarray, decay: float = EWMA_DECAY) -> np.ndarray:
    """Return the finite ``returns`` rescaled to the volatility forecast for the next bar
    (Hull & White, 1998): ``r_t * sigma_{n+1} / sigma_t``.

    ``sigma_t^2`` is the EWMA forecast made before bar ``t``:
    ``sigma_{t+1}^2 = decay * sigma_t^2 + (1 - decay) * r_t^2``, seeded with the window's mean
    square so that the first bars are not divided by a guess of zero. Plain historical
    simulation weighs a calm year and a turbulent week alike, so its VaR lags a change of
    volatility and its breaches bunch after one; rescaling every past return to the volatility
    now keeps the sample's shape (fat tails, skew) and moves its scale with the market. The
    rescaled sample is homogeneous in the returns (``k r`` gives ``k`` times it), which the
    limits' exact scaling needs. Returns zeros when every return is zero.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"volatility_scaled: decay must be in (0, 1), received {decay!r}")
    values = _finite(returns)
    if len(values) == 0:
        return values
    squares = values * values
    seed = float(np.mean(squares))
    if seed == 0.0:
        return np.zeros_like(values)
    # The recursion as a first-order IIR filter (scipy runs it in C), started from the seed.
    following, _ = signal.lfilter([1.0 - decay], [1.0, -decay], squares, zi=[decay * seed])
    variance = np.concatenate([[seed], following])
    return values * np.sqrt(variance[-1] / variance[:-1])


def filtered_historical_var(returns: np.ndarray, confidence: float, horizon: int = 1) -> float:
    """Return the historical VaR of the returns rescaled to today's volatility
    (``volatility_scaled``): minus their ``1 - confidence`` quantile over the horizon."""
    _check("filtered_historical_var", confidence, horizon)
    return historical_var(volatility_scaled(returns), confidence, horizon)


def _moments(values: np.ndarray, horizon: int) -> tuple[float, float]:
    # Mean and standard deviation (ddof=1) of one period, scaled to the horizon as for iid returns.
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1))
    return mean * horizon, std * math.sqrt(horizon)


def parametric_var(returns: np.ndarray, confidence: float, horizon: int = 1) -> float:
    """Return the normal VaR ``-(mean * h + z_{1-c} * std * sqrt(h))``, std with ddof=1."""
    _check("parametric_var", confidence, horizon)
    values = _finite(returns)
    if len(values) < 2:
        return 0.0
    mean, std = _moments(values, horizon)
    z = float(stats.norm.ppf(1.0 - confidence))
    return max(0.0, -(mean + z * std))


def _shape(values: np.ndarray, horizon: int) -> tuple[float, float]:
    """Return sample skewness and excess kurtosis, scaled to the horizon as for iid returns.

    The bias-corrected estimators (``bias=False``: adjusted Fisher-Pearson G1 and G2, as pandas'
    ``skew``/``kurt`` and spreadsheets report) go with the ddof=1 standard deviation. Sums of
    ``h`` iid returns have skewness ``S / sqrt(h)`` and excess kurtosis ``K / h``. G2 needs four
    returns and both need some spread; without them the expansion is dropped (normal quantile).
    """
    if len(values) < 4 or np.std(values) == 0.0:
        return 0.0, 0.0
    skewness = float(stats.skew(values, bias=False))
    excess_kurtosis = float(stats.kurtosis(values, fisher=True, bias=False))
    return skewness / math.sqrt(horizon), excess_kurtosis / horizon


def _cornish_fisher_z(z: float, skewness: float, excess_kurtosis: float) -> float:
    return (
        z
        + (z**2 - 1.0) * skewness / 6.0
        + (z**3 - 3.0 * z) * excess_kurtosis / 24.0
        - (2.0 * z**3 - 5.0 * z) * skewness**2 / 36.0
    )


def cornish_fisher_var(returns: np.ndarray, confidence: float, horizon: int = 1) -> float:
    """Return the VaR whose normal quantile is corrected for sample skewness and kurtosis.

    ``-(mean * h + z_cf * std * sqrt(h))`` with the second-order Cornish-Fisher quantile
    ``z_cf = z + (z^2-1) S/6 + (z^3-3z) K/24 - (2z^3-5z) S^2/36`` (see ``_shape`` for S, K).
    Negative skew and fat tails raise it at 99%, but the expansion is a monotone quantile only
    for moderate S and K (0 <= K <= 8 when S = 0): beyond that it can fall at 95% as K grows,
    and even floor at zero at 90% (a single stock with K near 20 does), so prefer 99% with it.
    """
    _check("cornish_fisher_var", confidence, horizon)
    values = _finite(returns)
    if len(values) < 2:
        return 0.0
    mean, std = _moments(values, horizon)
    skewness, excess_kurtosis = _shape(values, horizon)
    z = _cornish_fisher_z(float(stats.norm.ppf(1.0 - confidence)), skewness, excess_kurtosis)
    return max(0.0, -(mean + z * std))


_VAR: dict[str, Callable[[np.ndarray, float, int], float]] = {
    "historical": historical_var,
    "filtered-historical": filtered_historical_var,
    "parametric": parametric_var,
    "cornish-fisher": cornish_fisher_var,
}


def _method(owner: str, method: str) -> None:
    if method not in VAR_METHODS:
        raise ValueError(f"{owner}: method must be one of {VAR_METHODS}, received {method!r}")


def value_at_risk(
    returns: np.ndarray, confidence: float, method: VarMethod = "historical", horizon: int = 1
) -> float:
    """Return the VaR of ``returns`` by ``method``, as a positive loss fraction."""
    _method("value_at_risk", method)
    return _VAR[method](returns, confidence, horizon)


def expected_shortfall(
    returns: np.ndarray, confidence: float, method: VarMethod = "historical", horizon: int = 1
) -> float:
    """Return the mean loss beyond the VaR of the same method, as a positive loss fraction.

    - historical: minus the mean of the (horizon) returns at or below the VaR quantile.
    - filtered-historical: the same, of the returns rescaled to today's volatility.
    - parametric: the normal closed form ``-(mean * h) + std * sqrt(h) * phi(z) / (1 - c)``.
    - cornish-fisher: the tail mean of the Cornish-Fisher quantile function itself,
      ``-(mean * h + std * sqrt(h) * E)`` with ``E = (1/a) * integral_0^a z_cf(p) dp``,
      ``a = 1 - c``. Integrating the CF polynomial against the normal density in closed form
      gives ``E = -phi(z) / a * (1 + S z/6 + K (z^2-1)/24 + S^2 (1-2z^2)/36)``, ``z = z_{1-c}``
      (S = K = 0 gives the normal ES). This is the ES of the distribution that the CF VaR
      assumes, not Boudt, Peterson & Croux's (2008) Edgeworth-density ES. Where S and K lie
      outside the expansion's monotone range the tail mean could fall below the quantile, so
      it is raised to the CF VaR: an ES is never smaller than its VaR.
    """
    _method("expected_shortfall", method)
    _check("expected_shortfall", confidence, horizon)
    values = _finite(returns)
    tail = 1.0 - confidence
    if method == "filtered-historical":
        values, method = volatility_scaled(values), "historical"
    if method == "historical":
        sample = horizon_returns(values, horizon)
        if len(sample) == 0:
            return 0.0
        cutoff = np.quantile(sample, tail)
        return float(max(0.0, -np.mean(sample[sample <= cutoff])))
    if len(values) < 2:
        return 0.0
    mean, std = _moments(values, horizon)
    z = float(stats.norm.ppf(tail))
    density = float(stats.norm.pdf(z))
    if method == "parametric":
        return max(0.0, -mean + std * density / tail)
    skewness, excess_kurtosis = _shape(values, horizon)
    correction = (
        1.0
        + skewness * z / 6.0
        + excess_kurtosis * (z**2 - 1.0) / 24.0
        + skewness**2 * (1.0 - 2.0 * z**2) / 36.0
    )
    tail_mean = -density / tail * correction
    quantile = _cornish_fisher_z(z, skewness, excess_kurtosis)
    return max(0.0, -(mean + min(tail_mean, quantile) * std))


def max_drawdown(equity: np.ndarray) -> float:
    """Return the largest fraction below the running high-water mark (>= 0; 0.0 when empty)."""
    values = np.asarray(equity, dtype=float)
    if len(values) == 0:
        return 0.0
    return float((1.0 - values / np.maximum.accumulate(values)).max())


def cagr(equity: np.ndarray, periods_per_year: float) -> float:
    """Return the compound annual growth rate; 0.0 without a period or with a wiped-out curve."""
    values = np.asarray(equity, dtype=float)
    years = (len(values) - 1) / periods_per_year
    if years <= 0 or values[-1] <= 0:
        return 0.0
    # numpy scalars, not Python floats: a short steep curve overflows to inf instead of raising.
    return float((values[-1] / values[0]) ** (1.0 / years) - 1.0)


def annualised_volatility(returns: np.ndarray, periods_per_year: float) -> float:
    """Return the standard deviation (ddof=1) scaled by ``sqrt(periods_per_year)``."""
    values = _finite(returns)
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) * math.sqrt(periods_per_year))


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """Return ``mean / std (ddof=1) * sqrt(periods_per_year)`` at a zero risk-free rate.

    0.0 when the ratio is undefined (fewer than two returns, or no spread), so a summary of a
    flat curve stays finite JSON.
    """
    values = _finite(returns)
    if len(values) < 2:
        return 0.0
    volatility = float(np.std(values, ddof=1))
    if volatility <= 0:
        return 0.0
    return float(np.mean(values) / volatility * math.sqrt(periods_per_year))


def sortino_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """Return ``mean / downside deviation * sqrt(periods_per_year)``, target return 0.

    The downside deviation ``sqrt(mean(min(r, 0)^2))`` averages over all returns, gains
    counting as zero, so it penalises losses only. 0.0 when undefined (fewer than two returns,
    or no loss at all), as for ``sharpe_ratio``.
    """
    values = _finite(returns)
    if len(values) < 2:
        return 0.0
    downside = math.sqrt(float(np.mean(np.minimum(values, 0.0) ** 2)))
    if downside <= 0:
        return 0.0
    return float(np.mean(values) / downside * math.sqrt(periods_per_year))


def calmar_ratio(equity: np.ndarray, periods_per_year: float) -> float:
    """Return CAGR over max drawdown; 0.0 when the curve never fell (the ratio is undefined)."""
    deepest = max_drawdown(equity)
    if deepest <= 0:
        return 0.0
    return cagr(equity, periods_per_year) / deepest

"""Backtests of VaR forecasts: count the losses beyond them and test the count (Kupiec).

A VaR at confidence ``c`` that is right is breached on a fraction ``1 - c`` of the periods it
covers. Kupiec's (1995) proportion-of-failures test asks whether the breach count is consistent
with that rate; it ignores when the breaches happen (clusters pass), which is Christoffersen's
independence test's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats


@dataclass(frozen=True)
class VarBreaches:
    """How many of the ``observations`` periods with a forecast lost more than it."""

    breaches: int
    observations: int


@dataclass(frozen=True)
class KupiecResult:
    """Kupiec's proportion-of-failures test of a breach count.

    ``statistic`` is the likelihood ratio, chi-square with one degree of freedom when the
    forecasts are right; a small ``p_value`` says the breach rate is not ``expected_rate``.
    """

    breaches: int
    observations: int
    breach_rate: float
    expected_rate: float
    statistic: float
    p_value: float


def count_var_breaches(returns: ArrayLike, var_forecasts: ArrayLike) -> VarBreaches:
    """Count the periods whose loss ``-returns[i]`` exceeds ``var_forecasts[i]``.

    The two are aligned by position: ``var_forecasts[i]`` must be the forecast made before
    ``returns[i]`` was realised (shift it first). Periods without a forecast (NaN) or without a
    return (NaN) are skipped, so they count neither as breaches nor as observations. A flat
    book's forecast of 0 is a forecast: callers that do not want it checked pass NaN there.
    """
    realised = np.asarray(returns, dtype=float)
    forecasts = np.asarray(var_forecasts, dtype=float)
    if realised.shape != forecasts.shape or realised.ndim != 1:
        raise ValueError(
            "count_var_breaches: returns and var_forecasts must be 1-D and of equal length, "
            f"received shapes {realised.shape} and {forecasts.shape}"
        )
    checked = ~np.isnan(realised) & ~np.isnan(forecasts)
    breached = -realised[checked] > forecasts[checked]
    return VarBreaches(breaches=int(breached.sum()), observations=int(checked.sum()))


def kupiec_pof(breaches: int, observations: int, coverage: float) -> KupiecResult:
    """Return Kupiec's (1995) proportion-of-failures likelihood-ratio test.

    ``coverage`` is the VaR's confidence level (0.99 for a 99% VaR), so the expected breach rate
    is ``p = 1 - coverage``. With ``x`` breaches in ``T`` observations and ``x / T`` the observed
    rate::

        LR = -2 * [(T - x) ln(1 - p) + x ln p - (T - x) ln(1 - x/T) - x ln(x/T)]

    asymptotically chi-square(1) under ``H0: rate == p``. ``0 ln 0`` is taken as 0 (its limit),
    so no breaches (``LR = -2 T ln(1 - p)``) and all breaches (``LR = -2 T ln p``) are finite.

    Kupiec, P. (1995), "Techniques for verifying the accuracy of risk measurement models",
    Journal of Derivatives 3(2), 73-84.
    """
    if not 0.0 < coverage < 1.0:  # also rejects NaN
        raise ValueError(f"kupiec_pof: coverage must be in (0, 1), received {coverage!r}")
    if observations < 1:
        raise ValueError(f"kupiec_pof: observations must be >= 1, received {observations!r}")
    if not 0 <= breaches <= observations:
        raise ValueError(
            f"kupiec_pof: breaches must be in [0, observations={observations}], "
            f"received {breaches!r}"
        )
    expected = 1.0 - coverage
    rate = breaches / observations
    misses = observations - breaches
    # xlogy(0, 0) == 0: the likelihood of an observed rate of 0 or 1 is 1, not NaN.
    null = special.xlogy(misses, 1.0 - expected) + special.xlogy(breaches, expected)
    observed = special.xlogy(misses, 1.0 - rate) + special.xlogy(breaches, rate)
    # The observed rate maximises the likelihood, so LR >= 0 but for rounding.
    statistic = max(0.0, float(-2.0 * (null - observed)))
    return KupiecResult(
        breaches=int(breaches),
        observations=int(observations),
        breach_rate=float(rate),
        expected_rate=float(expected),
        statistic=statistic,
        p_value=float(stats.chi2.sf(statistic, df=1)),
    )


def kupiec_test(returns: ArrayLike, var_forecasts: ArrayLike, coverage: float) -> KupiecResult:
    """Count the breaches of ``var_forecasts`` (see ``count_var_breaches``) and test them."""
    counted = count_var_breaches(returns, var_forecasts)
    return kupiec_pof(counted.breaches, counted.observations, coverage)

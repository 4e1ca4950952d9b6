"""Tests of the difference between two Sharpe ratios measured on the same periods.

Two strategies backtested on one market are correlated, so their Sharpe ratios cannot be compared
as if they were independent. ``jobson_korkie_memmel`` is the classic closed form (normal, iid
returns); ``bootstrap_sharpe_difference`` resamples blocks of paired periods, so it keeps both
the correlation between the strategies and each one's serial dependence and fat tails, which
make the closed form reject too often.

The bootstrap draws its indices with the ``arch`` package (Kevin Sheppard's econometrics
library): its stationary and circular block bootstraps are tested, seedable, and come with
Politis and White's automatic block length, so none of that is re-implemented here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from engine.risk.measures import sharpe_ratio

BootstrapMethod = Literal["stationary", "circular"]
BOOTSTRAP_METHODS: tuple[str, ...] = ("stationary", "circular")
# Fewer paired returns than this leave the variance of a Sharpe ratio meaningless.
MIN_OBSERVATIONS = 3
# Per-period Sharpe ratios closer than this are equal: what is left is rounding, as between a
# strategy and a leveraged copy of it. Without it the closed form divides rounding by rounding.
SHARPE_TIE = 1e-12


@dataclass(frozen=True)
class SharpeDifference:
    """Jobson-Korkie-Memmel test of ``sharpe_a - sharpe_b``.

    The Sharpe ratios are annualised by the ``periods_per_year`` the test was given; the
    statistic and the p-value do not depend on it.
    """

    sharpe_a: float
    sharpe_b: float
    difference: float
    correlation: float
    statistic: float
    p_value: float
    observations: int


@dataclass(frozen=True)
class SharpeBootstrap:
    """Block-bootstrap test and confidence interval of ``sharpe_a - sharpe_b`` (annualised)."""

    sharpe_a: float
    sharpe_b: float
    difference: float
    p_value: float
    confidence_interval: tuple[float, float]
    confidence: float
    method: str
    block_length: float
    repetitions: int
    seed: int
    observations: int


def _paired(owner: str, returns_a: ArrayLike, returns_b: ArrayLike) -> tuple[np.ndarray, ...]:
    a = np.asarray(returns_a, dtype=float)
    b = np.asarray(returns_b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"{owner}: returns_a and returns_b must be 1-D and of equal length (the same "
            f"periods), received shapes {a.shape} and {b.shape}"
        )
    # A period missing from either strategy is dropped from both: the test needs pairs.
    both = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[both], b[both]
    if len(a) < MIN_OBSERVATIONS:
        raise ValueError(
            f"{owner}: needs at least {MIN_OBSERVATIONS} paired returns, received {len(a)}"
        )
    for name, values in (("returns_a", a), ("returns_b", b)):
        if np.std(values) == 0.0:
            raise ValueError(f"{owner}: {name} has no spread, so its Sharpe ratio is undefined")
    return a, b


def jobson_korkie_memmel(
    returns_a: ArrayLike, returns_b: ArrayLike, periods_per_year: float = 1.0
) -> SharpeDifference:
    """Test ``H0: SR_a == SR_b`` on paired per-period returns (Jobson-Korkie with Memmel's fix).

    With per-period Sharpe ratios ``SR_i = mean_i / std_i`` (std with ddof=1), their correlation
    ``rho`` and ``T`` paired periods::

        z = (SR_a - SR_b) / sqrt(theta)
        theta = (2 - 2 rho + (SR_a^2 + SR_b^2 - 2 SR_a SR_b rho^2) / 2) / T

    standard normal under H0; the p-value is two-sided. ``theta`` is Memmel's corrected
    asymptotic variance (the delta method under normality), written in Sharpe ratios by dividing
    his moments form by ``std_a^2 std_b^2``: Jobson and Korkie's last term,
    ``-SR_a SR_b (1 + rho^2) / 2``, becomes ``-SR_a SR_b rho^2``. It assumes iid, jointly
    normal returns: fat tails and autocorrelation make it reject too often, which the block
    bootstrap does not assume.

    Jobson, J. D. and Korkie, B. M. (1981), "Performance hypothesis testing with the Sharpe and
    Treynor measures", Journal of Finance 36(4), 889-908. Memmel, C. (2003), "Performance
    hypothesis testing with the Sharpe ratio", Finance Letters 1, 21-23.
    """
    a, b = _paired("jobson_korkie_memmel", returns_a, returns_b)
    observations = len(a)
    sharpe_a, sharpe_b = sharpe_ratio(a, 1.0), sharpe_ratio(b, 1.0)
    # Clipped: rounding can put the correlation of a strategy and its copy a hair above 1.
    rho = min(1.0, max(-1.0, float(np.corrcoef(a, b)[0, 1])))
    theta = (
        2.0 - 2.0 * rho + 0.5 * (sharpe_a**2 + sharpe_b**2 - 2.0 * sharpe_a * sharpe_b * rho**2)
    ) / observations
    difference = sharpe_a - sharpe_b
    # Equal ratios leave nothing to test: z = 0. It also keeps theta, which is 0 when one
    # strategy is a positive multiple of the other, from dividing rounding by rounding.
    statistic = difference / math.sqrt(theta) if abs(difference) > SHARPE_TIE else 0.0
    scale = math.sqrt(periods_per_year)
    return SharpeDifference(
        sharpe_a=sharpe_a * scale,
        sharpe_b=sharpe_b * scale,
        difference=difference * scale,
        correlation=rho,
        statistic=float(statistic),
        p_value=float(2.0 * stats.norm.sf(abs(statistic))),
        observations=observations,
    )


def bootstrap_sharpe_difference(
    returns_a: ArrayLike,
    returns_b: ArrayLike,
    periods_per_year: float = 1.0,
    *,
    method: BootstrapMethod = "stationary",
    block_length: float | None = None,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> SharpeBootstrap:
    """Test ``H0: SR_a == SR_b`` by resampling blocks of paired periods.

    Each repetition draws the same blocks of periods for both strategies (Politis and Romano's
    stationary bootstrap, or the circular block bootstrap) and recomputes ``d* = SR_a* - SR_b*``.
    The p-value is two-sided on the bootstrap distribution centred on the observed difference
    ``d`` (which imposes the null): ``(1 + #{|d* - d| >= |d|}) / (1 + repetitions)``; the
    interval is the percentile interval of ``d*``. Without ``block_length``, the mean block
    length is Politis and White's (2004, corrected by Patton, Politis and White 2009) optimum
    for each series, the larger of the two, at least 1.

    The centred statistic is not studentised (Ledoit and Wolf 2008 studentise it, at the cost
    of a HAC variance in every repetition), so in short samples its size is approximate.

    Politis, D. N. and Romano, J. P. (1994), "The stationary bootstrap", JASA 89, 1303-1313.
    Ledoit, O. and Wolf, M. (2008), "Robust performance hypothesis testing with the Sharpe
    ratio", Journal of Empirical Finance 15(5), 850-859.
    """
    owner = "bootstrap_sharpe_difference"
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"{owner}: method must be one of {BOOTSTRAP_METHODS}, received {method!r}")
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"{owner}: repetitions must be an integer >= 1, received {repetitions!r}")
    if not 0.0 < confidence < 1.0:  # also rejects NaN
        raise ValueError(f"{owner}: confidence must be in (0, 1), received {confidence!r}")
    if block_length is not None and not block_length >= 1.0:
        raise ValueError(f"{owner}: block_length must be >= 1 or None, received {block_length!r}")
    a, b = _paired(owner, returns_a, returns_b)
    # Imported here: arch loads statsmodels (over a second at import), which only this needs.
    from arch.bootstrap import CircularBlockBootstrap, StationaryBootstrap, optimal_block_length

    if block_length is None:
        optimal = optimal_block_length(np.column_stack([a, b]))[method]
        block_length = max(1.0, float(optimal.max()))
    if method == "stationary":
        resampler = StationaryBootstrap(block_length, a, b, seed=seed)
    else:
        # The circular bootstrap takes whole blocks: round the length up.
        block_length = float(math.ceil(block_length))
        resampler = CircularBlockBootstrap(int(block_length), a, b, seed=seed)

    def difference_of(sample_a: np.ndarray, sample_b: np.ndarray) -> np.ndarray:
        return np.array([sharpe_ratio(sample_a, 1.0) - sharpe_ratio(sample_b, 1.0)])

    observed = float(difference_of(a, b)[0])
    resampled = resampler.apply(difference_of, repetitions)[:, 0]
    # Ties within rounding count as extreme: equal ratios give p = 1, whatever the rounding.
    extreme = int(np.sum(np.abs(resampled - observed) >= abs(observed) - SHARPE_TIE))
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(resampled, [tail, 1.0 - tail])
    scale = math.sqrt(periods_per_year)
    return SharpeBootstrap(
        sharpe_a=sharpe_ratio(a, periods_per_year),
        sharpe_b=sharpe_ratio(b, periods_per_year),
        difference=observed * scale,
        p_value=(1 + extreme) / (1 + repetitions),
        confidence_interval=(float(lower) * scale, float(upper) * scale),
        confidence=confidence,
        method=method,
        block_length=float(block_length),
        repetitions=repetitions,
        seed=seed,
        observations=len(a),
    )

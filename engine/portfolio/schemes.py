"""Simple ways from asset scores to long-only weights, and scores to expected returns.

Every scheme holds the top ``fraction`` of the assets it can weigh (the count rounded down, so
too small a universe holds cash) and leaves the rest at 0. A NaN score means "not scored":
never held. Ties in score are broken by position (the first asset wins), so the choice is
deterministic.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "expected_returns",
    "inverse_volatility_weights",
    "score_proportional_weights",
    "top_fraction_count",
    "top_fraction_weights",
]


def top_fraction_count(fraction: float, n_assets: int) -> int:
    """Return how many of ``n_assets`` the top ``fraction`` holds: rounded down, with a
    tolerance so that 0.25 of 4 is 1 despite binary fractions."""
    return int(np.floor(fraction * n_assets + 1e-9))


def top_fraction_weights(scores: np.ndarray, fraction: float, gross: float = 1.0) -> np.ndarray:
    """Return equal weights summing to ``gross`` on the top ``fraction`` of assets with a score
    (the count is rounded down, so too small a universe holds cash); zero elsewhere.

    Ties are broken by position (the first asset wins), so the choice is deterministic.
    """
    weights = np.zeros(len(scores))
    valid = np.flatnonzero(~np.isnan(scores))
    count = top_fraction_count(fraction, len(valid))
    if count == 0:
        return weights
    order = valid[np.argsort(-scores[valid], kind="stable")]
    weights[order[:count]] = gross / count
    return weights


def _check(caller: str, fraction: float, gross: float, cap: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{caller}: fraction must be in [0, 1], received {fraction}")
    if not gross >= 0.0:
        raise ValueError(f"{caller}: gross must be >= 0, received {gross}")
    if not cap > 0.0:
        raise ValueError(f"{caller}: cap must be > 0, received {cap}")


def _top(scores: np.ndarray, eligible: np.ndarray, fraction: float) -> np.ndarray:
    # Indices of the top `fraction` of the eligible assets by score, best first.
    candidates = np.flatnonzero(eligible)
    count = top_fraction_count(fraction, len(candidates))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return order[:count]


def _capped(raw: np.ndarray, gross: float, cap: float) -> np.ndarray:
    """Scale positive ``raw`` to sum to ``gross``, with no weight above ``cap``.

    Water-filling: a weight over the cap is set to it and the excess is shared among the rest
    in proportion to ``raw``, repeated until nothing is over. When every name is capped the
    total is ``len(raw) * cap`` (< ``gross``): the rest stays in cash.
    """
    weights = np.zeros(len(raw))
    free = np.ones(len(raw), dtype=bool)
    remaining = gross
    while free.any():
        weights[free] = remaining * raw[free] / raw[free].sum()
        over = free & (weights > cap)
        if not over.any():
            break
        weights[over] = cap
        free &= ~over
        remaining = gross - cap * (~free).sum()
    return weights


def score_proportional_weights(
    scores: np.ndarray, fraction: float, gross: float, cap: float
) -> np.ndarray:
    """Return long-only weights on the top ``fraction`` of scored assets, proportional to rank.

    Among the k assets selected, the weakest has rank 1 and the strongest rank k (tied scores
    share their average rank); weights are proportional to that rank, capped at ``cap`` with
    the excess redistributed among the uncapped names, and sum to ``gross`` (less when k * cap
    < ``gross``: the rest is cash). Ranks, not the scores themselves, so weights do not depend
    on the scores' scale and every selected asset gets a positive weight (a score minus the
    lowest selected score would give the last one 0). NaN scores get 0.
    """
    _check("score_proportional_weights", fraction, gross, cap)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.zeros(len(scores))
    chosen = _top(scores, ~np.isnan(scores), fraction)
    if len(chosen) == 0:
        return weights
    selected = scores[chosen]
    # Average rank, ascending: 1 + (names strictly below) + (other names tied) / 2.
    below = (selected[:, None] > selected[None, :]).sum(axis=1)
    tied = (selected[:, None] == selected[None, :]).sum(axis=1) - 1
    ranks = 1.0 + below + tied / 2.0
    weights[chosen] = _capped(ranks, gross, cap)
    return weights


def inverse_volatility_weights(
    scores: np.ndarray, volatility: np.ndarray, fraction: float, gross: float, cap: float
) -> np.ndarray:
    """Return long-only weights on the top ``fraction`` by score, proportional to 1 / volatility.

    Only assets with a score and a finite, positive volatility are eligible; the fraction is of
    those. Weights are capped at ``cap`` with the excess redistributed among the uncapped names
    and sum to ``gross`` (less when every selected name is capped: the rest is cash).
    """
    _check("inverse_volatility_weights", fraction, gross, cap)
    scores = np.asarray(scores, dtype=np.float64)
    volatility = np.asarray(volatility, dtype=np.float64)
    if volatility.shape != scores.shape:
        raise ValueError(
            f"inverse_volatility_weights: volatility must have the scores' shape {scores.shape}, "
            f"received {volatility.shape}"
        )
    weights = np.zeros(len(scores))
    with np.errstate(invalid="ignore"):
        eligible = ~np.isnan(scores) & np.isfinite(volatility) & (volatility > 0)
    chosen = _top(scores, eligible, fraction)
    if len(chosen) == 0:
        return weights
    weights[chosen] = _capped(1.0 / volatility[chosen], gross, cap)
    return weights


def expected_returns(scores: np.ndarray, volatility: np.ndarray, ic: float) -> np.ndarray:
    """Return Grinold's expected returns, ``ic * volatility * z`` (per period, as volatility).

    ``z`` is the cross-sectional z-score of ``scores`` over the scored assets (mean 0, ddof-0
    standard deviation 1). NaN score or volatility gives NaN; when all scores are equal, ``z``
    and so every alpha are 0 (no ranking information).
    """
    scores = np.asarray(scores, dtype=np.float64)
    volatility = np.asarray(volatility, dtype=np.float64)
    if volatility.shape != scores.shape or scores.ndim != 1:
        raise ValueError(
            "expected_returns: scores and volatility must be 1-D of one shape, received "
            f"{scores.shape} and {volatility.shape}"
        )
    valid = ~np.isnan(scores)
    z = np.full(scores.shape, np.nan)
    if valid.any():
        present = scores[valid]
        spread = present.std()
        z[valid] = 0.0 if present.max() == present.min() else (present - present.mean()) / spread
    return ic * volatility * z

"""Turn factor exposures into asset scores, and scores into long-only target weights."""

from __future__ import annotations

import numpy as np

from strategies.preprocessing import zscore

__all__ = ["equal_factor_scores", "top_fraction_count", "top_fraction_weights", "zscore"]


def equal_factor_scores(exposures: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Return per-asset scores: the weighted sum of z-scored factor columns.

    ``exposures`` is shaped (F, N). An asset missing any factor gets NaN (excluded): scoring
    it on fewer factors would compare it on a different basis from the rest.
    """
    n_factors = exposures.shape[0]
    weights = np.full(n_factors, 1.0 / n_factors) if weights is None else np.asarray(weights, float)
    standardised = zscore(exposures)
    return weights @ standardised


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

"""Turn factor exposures into asset scores, and scores into long-only target weights.

The weighting schemes live in ``engine.portfolio.schemes``; ``top_fraction_count`` and
``top_fraction_weights`` are re-exported here for existing callers.
"""

from __future__ import annotations

import numpy as np

from engine.portfolio.schemes import top_fraction_count, top_fraction_weights
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

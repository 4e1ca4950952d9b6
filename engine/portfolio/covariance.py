"""A Ledoit-Wolf risk model, kept as a factor plus a ridge so the optimiser never forms Sigma.

scikit-learn's Ledoit-Wolf estimate is ``(1 - d) S + d mu I`` with ``S = Xc.T @ Xc / T`` (columns
centred, ddof 0), ``mu = trace(S) / N`` and ``d`` the shrinkage. Written as
``L.T @ L + ridge I`` with ``L = sqrt((1 - d) / T) Xc`` (T x N) and ``ridge = d mu``, the
variance of a portfolio is ``|L w|^2 + ridge |w|^2``: a sum of T + N squares instead of an
N x N quadratic form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["RiskModel", "ledoit_wolf_model", "load_estimator"]


def load_estimator() -> Callable[..., float]:
    """Return scikit-learn's Ledoit-Wolf shrinkage, importing scikit-learn on the first call.

    Not imported with this module: scikit-learn, with the scipy and pandas it loads (up to
    190 MB resident and a second), is for the process that fits a risk model (the rebalancer),
    not for every process that imports the portfolio package for its lot rules or schemes.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    return ledoit_wolf_shrinkage


@dataclass(frozen=True)
class RiskModel:
    """Sigma = loadings.T @ loadings + ridge * I (the Ledoit-Wolf estimate, kept in this form so
    the optimiser's risk term is a sum of squares of T x N, not N x N).

    Attributes
    ----------
    loadings
        (T, N): ``sqrt((1 - shrinkage) / T)`` times the centred returns.
    ridge
        >= 0: the shrinkage times the mean sample variance.
    mean
        (N,): mean per-period return of each asset over the rows it has (0 for an asset with none).
    returns
        (T, N): the per-period returns the model was fitted on, each missing return filled with
        its asset's mean (so it adds nothing to any sum of centred products).
    """

    loadings: np.ndarray
    ridge: float
    mean: np.ndarray
    returns: np.ndarray

    def covariance(self) -> np.ndarray:
        """(N, N) per-period covariance."""
        n_assets = self.loadings.shape[1]
        return self.loadings.T @ self.loadings + self.ridge * np.eye(n_assets)

    def volatility(self) -> np.ndarray:
        """(N,) per-period volatility: the square root of the covariance's diagonal."""
        return np.sqrt(np.einsum("ti,ti->i", self.loadings, self.loadings) + self.ridge)

    def portfolio_variance(self, weights: np.ndarray) -> float:
        """Per-period variance of ``weights`` (N,), from the loadings and ridge (Sigma unformed)."""
        weights = np.asarray(weights, dtype=np.float64)
        exposure = self.loadings @ weights
        return float(exposure @ exposure + self.ridge * (weights @ weights))


def ledoit_wolf_model(returns: np.ndarray) -> RiskModel:
    """Fit the Ledoit-Wolf risk model to ``returns`` (T, N): per-period simple returns, NaN
    where an asset had no bar.

    Missing returns: each column is centred on the rows it has, then NaN becomes 0 (the
    column's mean). A filled row adds nothing to that asset's sums of squares and
    cross-products, which are still divided by T, so an asset with a short history has its
    variance and covariances shrunk towards 0 by the share of rows it misses; the alternative,
    pairwise-complete sums, can give a matrix that is not positive semi-definite, which the
    factor form here always is. An asset with no return at all gets zero loadings and mean 0,
    as does every asset when there is a single row (no variance can be estimated from one
    observation); the ridge is then 0.

    Raises ``ValueError`` when ``returns`` is not 2-D or has no rows.
    """
    array = np.array(returns, dtype=np.float64)  # a copy: the caller's array is never modified
    if array.ndim != 2:
        raise ValueError(
            f"ledoit_wolf_model: returns must be 2-D (periods, assets), received shape "
            f"{array.shape}"
        )
    n_periods, n_assets = array.shape
    if n_periods == 0:
        raise ValueError(
            f"ledoit_wolf_model: returns has no rows (shape {array.shape}); a risk model "
            "needs at least one period"
        )
    missing = np.isnan(array)
    present = (~missing).sum(axis=0)
    mean = np.where(missing, 0.0, array).sum(axis=0) / np.maximum(present, 1)
    centred = np.where(missing, 0.0, array - mean)
    filled = centred + mean
    if n_periods < 2 or not centred.any():
        return RiskModel(np.zeros_like(centred), 0.0, mean, filled)
    shrinkage = float(load_estimator()(centred, assume_centered=True))
    if not np.isfinite(shrinkage):  # sklearn guards its 0 / 0; this guards any other case
        shrinkage = 0.0
    sample_variance_mean = float(np.einsum("ti,ti->", centred, centred)) / (n_periods * n_assets)
    loadings = np.sqrt((1.0 - shrinkage) / n_periods) * centred
    return RiskModel(loadings, shrinkage * sample_variance_mean, mean, filled)

"""Risk models kept in factor form, ``Sigma = B'B + diag(specific)``, so the optimiser never
forms Sigma.

Two estimates of the covariance of a window of per-period returns (T periods, N assets):

``ledoit_wolf_model``: scikit-learn's Ledoit-Wolf estimate ``(1 - d) S + d mu I`` with
``S = Xc.T @ Xc / T`` (columns centred, ddof 0), ``mu = trace(S) / N`` and ``d`` the shrinkage.
Written as ``B'B + ridge I`` with ``B = sqrt((1 - d) / T) Xc`` (T x N) and ``ridge = d mu``
on every asset, the variance of a portfolio is ``|B w|^2 + ridge |w|^2``: a sum of T + N
squares instead of an N x N quadratic form.

``pca_model``: a statistical factor model of that same Ledoit-Wolf estimate: its K leading
principal components as the loadings (``B = sqrt(eigenvalues) * eigenvectors'``, K x N) and
what they leave of each asset's variance as its specific variance, floored. Each asset keeps
its Ledoit-Wolf variance (so its volatility, and the expected returns built on it, do not
change); only the correlations are cut to K factors. The optimiser's risk term is then K + N
squares, and its solve time falls with K (Clarabel's factorisation holds the K x N block).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["RiskModel", "ledoit_wolf_model", "load_estimator", "pca_model"]

# An asset's specific variance is at least this share of the mean asset variance: an asset
# (nearly) spanned by the K components would otherwise have none, and the optimiser would
# see a direction of almost no risk.
SPECIFIC_FLOOR = 0.01


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
    """Sigma = loadings.T @ loadings + diag(specific), kept in this form so the optimiser's
    risk term is a sum of squares of K x N plus a diagonal, not N x N.

    Attributes
    ----------
    loadings
        (K, N): Ledoit-Wolf, K = T: ``sqrt((1 - shrinkage) / T)`` times the centred returns;
        PCA: the K principal components, each scaled by the square root of its variance.
    specific
        (N,), >= 0: each asset's variance outside the loadings (Ledoit-Wolf: the shrinkage
        times the mean sample variance, the same for every asset).
    mean
        (N,): mean per-period return of each asset over the rows it has (0 for an asset with none).
    returns
        (T, N): the per-period returns the model was fitted on, each missing return filled with
        its asset's mean (so it adds nothing to any sum of centred products).
    """

    loadings: np.ndarray
    specific: np.ndarray
    mean: np.ndarray
    returns: np.ndarray

    def covariance(self) -> np.ndarray:
        """(N, N) per-period covariance."""
        return self.loadings.T @ self.loadings + np.diag(self.specific)

    def volatility(self) -> np.ndarray:
        """(N,) per-period volatility: the square root of the covariance's diagonal."""
        return np.sqrt(np.einsum("ki,ki->i", self.loadings, self.loadings) + self.specific)

    def portfolio_variance(self, weights: np.ndarray) -> float:
        """Per-period variance of ``weights`` (N,), from the loadings and the specific
        variances (Sigma unformed)."""
        weights = np.asarray(weights, dtype=np.float64)
        exposure = self.loadings @ weights
        return float(exposure @ exposure + self.specific @ (weights * weights))


@dataclass(frozen=True)
class _Centred:
    mean: np.ndarray
    centred: np.ndarray  # (T, N): centred returns, 0 where missing
    filled: np.ndarray  # (T, N): returns, the asset's mean where missing
    shrinkage: float  # Ledoit-Wolf's d; NaN when no variance can be estimated
    mean_variance: float  # mu = trace(S) / N


def _centre(returns: np.ndarray, owner: str) -> _Centred:
    array = np.array(returns, dtype=np.float64)  # a copy: the caller's array is never modified
    if array.ndim != 2:
        raise ValueError(
            f"{owner}: returns must be 2-D (periods, assets), received shape {array.shape}"
        )
    n_periods, n_assets = array.shape
    if n_periods == 0:
        raise ValueError(
            f"{owner}: returns has no rows (shape {array.shape}); a risk model needs at least "
            "one period"
        )
    missing = np.isnan(array)
    present = (~missing).sum(axis=0)
    mean = np.where(missing, 0.0, array).sum(axis=0) / np.maximum(present, 1)
    centred = np.where(missing, 0.0, array - mean)
    filled = centred + mean
    if n_periods < 2 or not centred.any():
        return _Centred(mean, centred, filled, float("nan"), 0.0)
    shrinkage = float(load_estimator()(centred, assume_centered=True))
    if not np.isfinite(shrinkage):  # sklearn guards its 0 / 0; this guards any other case
        shrinkage = 0.0
    mean_variance = float(np.einsum("ti,ti->", centred, centred)) / (n_periods * n_assets)
    return _Centred(mean, centred, filled, shrinkage, mean_variance)


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
    observation); the specific variances are then 0.

    Raises ``ValueError`` when ``returns`` is not 2-D or has no rows.
    """
    fit = _centre(returns, "ledoit_wolf_model")
    n_periods, n_assets = fit.centred.shape
    if np.isnan(fit.shrinkage):
        return RiskModel(np.zeros_like(fit.centred), np.zeros(n_assets), fit.mean, fit.filled)
    loadings = np.sqrt((1.0 - fit.shrinkage) / n_periods) * fit.centred
    specific = np.full(n_assets, fit.shrinkage * fit.mean_variance)
    return RiskModel(loadings, specific, fit.mean, fit.filled)


def pca_model(returns: np.ndarray, n_factors: int) -> RiskModel:
    """Fit a statistical factor model to ``returns`` (T, N, NaN where an asset had no bar):
    the ``n_factors`` leading principal components of the Ledoit-Wolf covariance (missing
    returns treated as in ``ledoit_wolf_model``) and per-asset specific variances.

    The components are the sample covariance's (shrinkage moves every eigenvalue to
    ``(1 - d) lambda + d mu`` and keeps the eigenvectors), from numpy's ``eigh`` of the smaller
    Gram matrix of the centred returns (``_leading_components``). Each asset's specific
    variance is its Ledoit-Wolf variance less what the components explain, at least
    ``SPECIFIC_FLOOR`` times the mean asset variance. The model has
    K = min(n_factors, T, N) factor rows (the sample covariance has no more than min(T, N)
    components worth naming); with no estimable variance (one row, or no returns) its
    loadings and specific variances are 0.

    Raises ``ValueError`` when ``returns`` is not 2-D or has no rows, or ``n_factors < 1``.
    """
    if n_factors < 1:
        raise ValueError(f"pca_model: n_factors must be >= 1, received {n_factors}")
    fit = _centre(returns, "pca_model")
    n_periods, n_assets = fit.centred.shape
    n_rows = min(n_factors, n_periods, n_assets)
    if np.isnan(fit.shrinkage):
        return RiskModel(np.zeros((n_rows, n_assets)), np.zeros(n_assets), fit.mean, fit.filled)
    components, sample_eigenvalues = _leading_components(fit.centred, n_rows)
    eigenvalues = (1.0 - fit.shrinkage) * sample_eigenvalues + fit.shrinkage * fit.mean_variance
    eigenvalues[~components.any(axis=1)] = 0.0  # a padding row (see _leading_components)
    loadings = np.sqrt(eigenvalues)[:, None] * components
    variance = (1.0 - fit.shrinkage) * np.einsum(
        "ti,ti->i", fit.centred, fit.centred
    ) / n_periods + fit.shrinkage * fit.mean_variance
    explained = np.einsum("ki,ki->i", loadings, loadings)
    specific = np.maximum(variance - explained, SPECIFIC_FLOOR * fit.mean_variance)
    return RiskModel(loadings, specific, fit.mean, fit.filled)


def _leading_components(centred: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_rows`` leading eigenvectors (rows, K x N) and eigenvalues (K,) of the sample
    covariance ``centred.T @ centred / T``, largest first.

    With fewer periods than assets, from the T x T Gram matrix ``centred @ centred.T``: it has
    the same non-zero eigenvalues, and each eigenvector u gives the covariance's
    ``centred.T @ u / sqrt(eigenvalue)``. At T = 120, N = 500 that takes about 1 ms where
    numpy's SVD of the T x N matrix takes 8 and ``eigh`` of the N x N matrix more. A component
    of (numerically) zero variance has no direction to recover that way: its row is 0, and the
    specific variances carry what it would hold.
    """
    n_periods, n_assets = centred.shape
    if n_periods >= n_assets:
        values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
        components = vectors[:, ::-1][:, :n_rows].T
        values = np.maximum(values[::-1][:n_rows], 0.0)
        return components, values / n_periods
    values, left = np.linalg.eigh(centred @ centred.T)
    values = values[::-1][:n_rows]
    left = left[:, ::-1][:, :n_rows]
    kept = values > values[0] * n_assets * np.finfo(np.float64).eps
    components = np.zeros((n_rows, n_assets))
    components[kept] = (centred.T @ left[:, kept] / np.sqrt(values[kept])).T
    return components, np.where(kept, values, 0.0) / n_periods

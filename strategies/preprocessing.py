"""Cross-sectional preprocessing of factor exposures: winsorise, z-score, neutralise.

Cross-sectional means across assets at one time: a 1-D array is one cross-section (N,); a
2-D array (T, N) is treated row by row. Everything is NaN-aware: a NaN (an asset excluded for
too little history or a missing input) stays NaN, is left out of every statistic, and is
never filled with zero or the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Scales a median absolute deviation to a standard deviation for normally distributed data.
MAD_TO_STD = 1.482602218505602


def _as_rows(x: np.ndarray, caller: str) -> np.ndarray:
    array = np.array(x, dtype=np.float64)  # a copy: callers' arrays are never modified
    if array.ndim not in (1, 2):
        raise ValueError(
            f"{caller}: x must be 1-D (assets,) or 2-D (times, assets), "
            f"received shape {array.shape}"
        )
    return array


def _valid_counts(array: np.ndarray) -> np.ndarray:
    # Entries that are not NaN, per cross-section, shaped (..., 1) to broadcast against the rows.
    return array.shape[-1] - np.add.reduce(np.isnan(array), axis=-1, keepdims=True)


def _sorted_rows(array: np.ndarray) -> np.ndarray:
    # Each cross-section sorted, NaN last, as (rows, N) whatever the input's rank.
    return np.sort(array.reshape(-1, array.shape[-1]), axis=-1)


def _take(ordered: np.ndarray, columns: np.ndarray) -> np.ndarray:
    # ordered[row, columns[row, j]] for every row, by flat index: cheaper than take_along_axis.
    n_rows, n_columns = ordered.shape
    rows = np.arange(0, n_rows * n_columns, n_columns).reshape(-1, 1)
    return ordered.ravel()[rows + columns]


def _nan_median(array: np.ndarray) -> np.ndarray:
    # The median of each cross-section's valid entries, shaped (..., 1); NaN where there are none
    # (an all-NaN row reads its NaN at 0). np.nanmedian (a masked-array median per call) computes
    # the same mean of the two middle values, but costs about 100 microseconds even on a handful
    # of assets.
    ordered = _sorted_rows(array)
    count = _valid_counts(array).reshape(-1, 1)
    middle = np.maximum(np.concatenate(((count - 1) // 2, count // 2), axis=1), 0)
    low, high = _take(ordered, middle).T
    return ((low + high) / 2).reshape(array.shape[:-1] + (1,))


def winsorize_mad(x: np.ndarray, k: float = 5.0) -> np.ndarray:
    """Clip each cross-section to median +/- k * 1.4826 * MAD.

    The MAD (median absolute deviation from the median) is scaled by 1.4826 so that ``k`` counts
    standard deviations for normal data. A cross-section whose MAD is 0 (more than half the
    assets share one value) is returned unchanged, since its bounds would collapse onto the
    median.

    Parameters
    ----------
    x
        (N,) or (T, N); NaN entries stay NaN.
    k
        Half-width of the band, in robust standard deviations; must be positive.
    """
    if not k > 0:
        raise ValueError(f"winsorize_mad: k must be positive, received {k}")
    array = _as_rows(x, "winsorize_mad")
    if array.size == 0:
        return array
    with np.errstate(invalid="ignore"):  # middles -inf and inf average to NaN, as in numpy
        median = _nan_median(array)
        mad = _nan_median(np.abs(array - median))
    half_width = k * MAD_TO_STD * mad
    clipped = np.clip(array, median - half_width, median + half_width)
    return np.where(mad > 0, clipped, array)


def _nan_quantiles(array: np.ndarray, q: np.ndarray) -> np.ndarray:
    # The ``q`` quantiles of each cross-section's valid entries, shaped (..., len(q)); NaN where
    # there are none. np.nanquantile's linear method step by step (virtual index (n - 1) * q,
    # its floor and the next entry, and the same two-sided interpolation), for all rows at once
    # instead of one Python call per row.
    ordered = _sorted_rows(array)
    count = _valid_counts(array).reshape(-1, 1)
    virtual = (count - 1) * q
    previous = np.floor(virtual)
    # At or past the last valid entry numpy interpolates that entry with itself, measuring gamma
    # from index -1 (which only decides the sign of a zero bound). An all-NaN row always lands
    # here and reads its NaN at 0.
    at_end = virtual >= count - 1
    previous[at_end] = -1
    gamma = virtual - previous
    last = np.maximum(count - 1, 0)
    below = _take(ordered, np.where(at_end, last, previous).astype(np.intp))
    above = _take(ordered, np.where(at_end, last, previous + 1).astype(np.intp))
    with np.errstate(invalid="ignore"):  # inf - inf between infinite entries: numpy's NaN too
        difference = above - below
        bounds = np.where(
            gamma >= 0.5, above - difference * (1 - gamma), below + difference * gamma
        )
    return bounds.reshape(array.shape[:-1] + q.shape)


def winsorize_quantile(x: np.ndarray, lower: float = 0.01, upper: float = 0.99) -> np.ndarray:
    """Clip each cross-section to its ``lower`` and ``upper`` quantiles (linear interpolation).

    Parameters
    ----------
    x
        (N,) or (T, N); NaN entries stay NaN and are left out of the quantiles.
    lower, upper
        Quantiles with 0 <= lower < upper <= 1.
    """
    if not 0.0 <= lower < upper <= 1.0:
        raise ValueError(
            f"winsorize_quantile: need 0 <= lower < upper <= 1, received "
            f"lower={lower}, upper={upper}"
        )
    array = _as_rows(x, "winsorize_quantile")
    if array.size == 0:
        return array
    bounds = _nan_quantiles(array, np.array([lower, upper]))
    return np.clip(array, bounds[..., :1], bounds[..., 1:])


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise each cross-section: (x - mean) / std over its valid entries (ddof 0).

    A cross-section whose valid entries are all equal becomes 0 there (it carries no ranking
    information); NaN entries stay NaN.
    """
    array = _as_rows(x, "zscore")
    missing = np.isnan(array)
    valid = ~missing
    count = np.add.reduce(valid, axis=-1, keepdims=True, dtype=np.float64)  # float divides faster
    # np.nanmean and np.nanstd step by step (NaN summed as 0, deviations from that mean zeroed
    # where NaN, squared, summed, divided by the count), so the result is theirs to the bit at
    # a fraction of their cost. An all-NaN row divides 0 by 0, which gives its NaN answer.
    with np.errstate(all="ignore"):
        mean = np.add.reduce(np.where(missing, 0.0, array), axis=-1, keepdims=True) / count
        deviation = array - mean
        squares = np.where(missing, 0.0, deviation)
        squares *= squares
        std = np.sqrt(np.add.reduce(squares, axis=-1, keepdims=True) / count)
        standardised = deviation / std
    # Equal values are tested exactly: their computed std can be rounding noise, not zero.
    # fmax and fmin skip NaN; an all-NaN row compares -inf with inf, so it is not constant.
    constant = np.fmax.reduce(array, axis=-1, keepdims=True, initial=-np.inf) == np.fmin.reduce(
        array, axis=-1, keepdims=True, initial=np.inf
    )
    return np.where(constant & valid, 0.0, standardised)


def neutralize(x: np.ndarray, against: np.ndarray) -> np.ndarray:
    """Return the residual of the cross-sectional OLS of ``x`` on ``against`` with an intercept.

    Parameters
    ----------
    x
        One cross-section, shaped (N,).
    against
        Regressors shaped (K, N) (one row per factor to neutralise against) or (N,).

    Returns
    -------
    numpy.ndarray
        (N,): residuals, orthogonal to a constant and to every regressor over the assets used.
        The regression uses the assets where ``x`` and every regressor are present; the other
        assets get NaN, and so do all when too few remain (no more than K + 1).
        Collinear regressors are handled (minimum-norm least squares).
    """
    values = np.asarray(x, dtype=np.float64)
    regressors = np.atleast_2d(np.asarray(against, dtype=np.float64))
    if values.ndim != 1 or regressors.ndim != 2 or regressors.shape[1] != values.shape[0]:
        raise ValueError(
            f"neutralize: x must be (N,) and against (K, N); received "
            f"{values.shape} and {np.shape(against)}"
        )
    residual = np.full_like(values, np.nan)
    used = ~np.isnan(values) & ~np.isnan(regressors).any(axis=0)
    n_regressors = regressors.shape[0]
    if used.sum() <= n_regressors + 1:
        return residual
    design = np.column_stack([np.ones(int(used.sum())), regressors[:, used].T])
    coefficients, *_ = np.linalg.lstsq(design, values[used], rcond=None)
    residual[used] = values[used] - design @ coefficients
    return residual


def preprocess(
    exposures: np.ndarray,
    *,
    winsorize: str | None = "mad",
    neutralize_against: Sequence[int] = (),
    mad_k: float = 5.0,
    quantiles: tuple[float, float] = (0.01, 0.99),
) -> np.ndarray:
    """Winsorise and z-score each factor across assets, then neutralise the others if asked.

    Parameters
    ----------
    exposures
        (F, N): one row per factor, one column per asset, at one time.
    winsorize
        "mad" (:func:`winsorize_mad` with ``mad_k``), "quantile" (:func:`winsorize_quantile`
        with ``quantiles``) or None.
    neutralize_against
        Rows to neutralise the other rows against (e.g. beta and dollar volume): each other
        row is replaced by its residual on these (after their own winsorising and z-scoring),
        then z-scored again. These rows themselves are only winsorised and z-scored.

    Returns
    -------
    numpy.ndarray
        (F, N), NaN where the input is NaN (and, for neutralised rows, where a regressor is).
    """
    rows = np.asarray(exposures, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(
            f"preprocess: exposures must be (factors, assets), received shape {rows.shape}"
        )
    n_factors = rows.shape[0]
    against = []
    for index in neutralize_against:
        if isinstance(index, bool) or not -n_factors <= int(index) < n_factors:
            raise ValueError(
                f"preprocess: neutralize_against index {index!r} is out of range "
                f"for {n_factors} factors"
            )
        against.append(int(index) % n_factors)
    if winsorize == "mad":
        rows = winsorize_mad(rows, mad_k)
    elif winsorize == "quantile":
        rows = winsorize_quantile(rows, *quantiles)
    elif winsorize is not None:
        raise ValueError(
            f"preprocess: winsorize must be 'mad', 'quantile' or None, received {winsorize!r}"
        )
    result = zscore(rows)
    if against:
        regressors = result[sorted(set(against))]
        for row in range(n_factors):
            if row not in against:
                result[row] = zscore(neutralize(result[row], regressors))
    return result

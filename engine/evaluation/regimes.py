"""Market regimes: label each period bull, bear or high-volatility by a rule on past data only.

A strategy's figures over a whole backtest hide where they came from; split by regime they show
whether a model earns its keep in calm rises, in falls, or in turbulence. The label of period
``t`` uses the market's returns up to and including ``t`` and nothing later, so it is what an
observer could have said at the close of ``t``; changing later returns leaves it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BULL, BEAR, HIGH_VOLATILITY = "bull", "bear", "high-volatility"
REGIMES: tuple[str, ...] = (BULL, BEAR, HIGH_VOLATILITY)


@dataclass(frozen=True)
class RegimeLabels:
    """The regime of each period (NaN where the rule has too little history) and the rule.

    ``labels`` is categorical over ``REGIMES``, on the index of the market's returns; ``rule``
    is one sentence with the parameters, for the output table.
    """

    labels: pd.Series
    rule: str


def equal_weight_index_returns(closes: pd.DataFrame) -> pd.Series:
    """Return the per-period return of an equal-weight index of the columns of ``closes``.

    Each period averages the simple returns of the assets that have one (an asset before its
    listing, or on a missing close, sits out), rebalanced every period; the first period, with
    no return, is dropped.
    """
    return closes.pct_change(fill_method=None).mean(axis=1).iloc[1:]


def label_regimes(
    market_returns: pd.Series,
    window: int = 63,
    volatility_factor: float = 1.5,
    min_history: int | None = None,
) -> RegimeLabels:
    """Label each period of ``market_returns`` bull, bear or high-volatility.

    Over the trailing ``window`` periods (the current one included) take the volatility (std,
    ddof=1) and the compounded return. A period is high-volatility when that volatility is
    above ``volatility_factor`` times the median of the trailing volatilities so far (an
    expanding median, which needs ``min_history`` of them, default ``window``); otherwise it is
    bull when the trailing return is positive and bear when not. The expanding median, unlike
    a full-sample quantile, uses no future data. The defaults, a quarter of trading days and 1.5,
    label about a quarter of the days of the sample's 2014-2024 US stocks high-volatility
    (2015-16, late 2018 into 2019, 2020 and 2022). Pass the market's whole history: the first
    ``window + min_history - 2`` periods are unlabelled, and so is any window holding a NaN.
    """
    owner = "label_regimes"
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"{owner}: window must be an integer >= 2, received {window!r}")
    if not volatility_factor > 0:  # also rejects NaN
        raise ValueError(f"{owner}: volatility_factor must be > 0, received {volatility_factor!r}")
    history = window if min_history is None else min_history
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"{owner}: min_history must be an integer >= 1, received {history!r}")
    returns = pd.Series(market_returns, dtype=float)
    volatility = returns.rolling(window).std(ddof=1)
    # log1p sums compound exactly and, unlike a rolling product, never meet a 0 to divide by.
    trailing_return = np.expm1(np.log1p(returns).rolling(window).sum())
    threshold = volatility_factor * volatility.expanding(min_periods=history).median()
    labelled = volatility.notna() & threshold.notna() & trailing_return.notna()
    names = np.where(
        volatility > threshold, HIGH_VOLATILITY, np.where(trailing_return > 0, BULL, BEAR)
    )
    labels = pd.Series(
        pd.Categorical(np.where(labelled, names, None), categories=REGIMES),
        index=returns.index,
        name="regime",
    )
    rule = (
        f"A period is {HIGH_VOLATILITY} when the volatility of the market's returns over the "
        f"trailing {window} periods is above {volatility_factor:g} times the median of that "
        f"trailing volatility so far (after {history} values), else {BULL} when the market's "
        f"compounded return over those {window} periods is positive and {BEAR} when not."
    )
    return RegimeLabels(labels=labels, rule=rule)

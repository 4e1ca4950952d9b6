"""A market with something to learn: a factor premium that switches between factors with a
persistent regime that the market-state features reveal.

Two regimes follow a Markov chain (``persistence``: the chance of staying). In the calm one
the first factor ("momentum") pays; in the volatile one the second ("low_volatility") does;
the other factors never pay. Each asset's period return is ``premium`` x its exposure to the
paying factor plus noise, so that factor's rank IC is about ``premium``. The regime shows in
the market volatility feature (noisily), at once, while realised ICs only reveal a switch
after it happened: a model that reads the state can switch on time, trailing-IC weights lag.
Used by the "can it learn?" test and the model benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.evaluation import quantile_spread, rank_ic
from strategies.models.dataset import PeriodData
from strategies.models.features import MARKET_FEATURES

FACTORS = ("momentum", "low_volatility", "value", "size")


@dataclass(frozen=True)
class PlantedMarket:
    """The data, the regime of each period and the factor weights that were planted."""

    data: PeriodData
    regime: np.ndarray  # (T,) 0 calm, 1 volatile
    planted: np.ndarray  # (T, F) unit weight on the paying factor


def planted_regime_market(
    periods: int = 600,
    assets: int = 50,
    premium: float = 0.2,
    persistence: float = 0.95,
    state_noise: float = 0.5,
    seed: int = 0,
    factors: tuple[str, ...] = FACTORS,
    paying_factors: tuple[int, int] = (0, 1),
) -> PlantedMarket:
    """``factors[paying_factors[0]]`` pays in the calm regime, ``factors[paying_factors[1]]``
    in the volatile one (by default momentum, then low_volatility); the others never pay."""
    rng = np.random.default_rng(seed)
    n_factors = len(factors)
    regime = np.zeros(periods, dtype=np.int64)
    for t in range(1, periods):
        stay = rng.random() < persistence
        regime[t] = regime[t - 1] if stay else 1 - regime[t - 1]
    exposures = rng.standard_normal((periods, n_factors, assets))
    paying = np.asarray(paying_factors)[regime]
    noise = rng.standard_normal((periods, assets))
    signal = exposures[np.arange(periods), paying]  # (T, N)
    returns = 0.02 * (premium * signal + np.sqrt(1 - premium**2) * noise)
    # Row t's label is the return over t -> t+1: the decision at t sees exposures[t] and the
    # premium of regime[t]. Features at t report what was realised over t-1 -> t.
    realised_ic = np.zeros((periods, n_factors))
    realised_ls = np.zeros((periods, n_factors))
    for f in range(n_factors):
        realised_ic[1:, f] = rank_ic(exposures[:-1, f], returns[:-1])
        realised_ls[1:, f] = quantile_spread(exposures[:-1, f], returns[:-1])
    market = np.zeros((periods, len(MARKET_FEATURES)))
    market[1:, 0] = returns[:-1].mean(axis=1)
    market[:, 1] = 0.01 * (1.0 + regime + state_noise * rng.standard_normal(periods))
    market[1:, 4] = returns[:-1].std(axis=1)
    market[:, 3] = 0.5 + 0.05 * rng.standard_normal(periods)
    features = np.hstack([realised_ic, realised_ls, market])
    times = np.datetime64("2020-01-03", "ns") + np.arange(periods) * np.timedelta64(7, "D")
    label_times = np.concatenate([times[1:], np.array([np.datetime64("NaT", "ns")])])
    returns_out = returns.astype(np.float32)
    returns_out[-1] = np.nan  # the last period's label is not known yet
    data = PeriodData(
        times=times,
        label_times=label_times,
        symbols=tuple(f"A{i:03d}" for i in range(assets)),
        factors=tuple(factors),
        features=features,
        exposures=exposures.astype(np.float32),
        returns=returns_out,
    )
    planted = np.zeros((periods, n_factors))
    planted[np.arange(periods), paying] = 1.0
    return PlantedMarket(data, regime, planted)

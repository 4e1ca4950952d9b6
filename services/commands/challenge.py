"""Which of two models should serve: a newly fitted one (the challenger) or the active one.

Both are scored on the same rows: the challenger's validation periods (which the active model,
fitted earlier, may or may not have seen; it is never favoured by that, since a model that saw
them would score higher). The challenger becomes active when there is no active model, when
the active one cannot be loaded (or was trained on other factors), or when its mean rank IC
on those rows is higher. Said in a log line either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import structlog

from strategies.models import ModelError
from strategies.models.dataset import PeriodData
from strategies.models.registry import ModelRegistry
from strategies.models.training import score_rows

log = structlog.get_logger("services.commands.challenge")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a challenge: whether the challenger wins, and both scores."""

    challenger_wins: bool
    challenger_ic: float
    active: str | None
    active_ic: float
    reason: str


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def challenge(
    registry: ModelRegistry,
    strategy: str,
    challenger,
    data: PeriodData,
    rows: np.ndarray,
    device: str = "cpu",
) -> Verdict:
    """Compare ``challenger`` with the active model of ``strategy`` on ``rows`` of ``data``."""
    challenger_ic = _mean(score_rows(challenger, data, rows))
    active = registry.active(strategy)
    if active is None:
        return Verdict(True, challenger_ic, None, math.nan, "no active model")
    try:
        current = registry.load(strategy, factors=data.factors, device=device)
    except ModelError as error:
        return Verdict(True, challenger_ic, active, math.nan, f"active model unusable: {error}")
    usable = rows[rows >= current.lookback - 1]
    active_ic = _mean(score_rows(current, data, usable))
    if math.isnan(active_ic) or challenger_ic > active_ic:
        return Verdict(True, challenger_ic, active, active_ic, "higher validation IC")
    return Verdict(False, challenger_ic, active, active_ic, "validation IC not higher")

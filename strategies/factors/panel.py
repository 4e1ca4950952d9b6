"""Compute a set of factors over whole OHLCV panels (research, evaluation, benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from strategies.factors.history import FactorInputs, FullHistory
from strategies.factors.registry import FACTORS, FactorSpec

FactorRequest = tuple[str, str, Mapping[str, int]]


def resolve_requests(
    factors: Sequence[FactorRequest],
) -> list[tuple[str, FactorSpec, dict[str, int]]]:
    """Return ``(label, spec, resolved parameters)`` per request, checked.

    Raises
    ------
    ValueError
        On an unknown factor name, a repeated label, or parameters the factor refuses.
    """
    entries: list[tuple[str, FactorSpec, dict[str, int]]] = []
    labels: set[str] = set()
    for label, name, params in factors:
        spec = FACTORS.get(name)
        if spec is None:
            raise ValueError(
                f"factor {label!r}: unknown factor name {name!r}; registered "
                f"factors are {sorted(FACTORS)}"
            )
        if label in labels:
            raise ValueError(f"factor label {label!r} is used twice; labels must be unique")
        labels.add(label)
        entries.append((label, spec, spec.resolve(**dict(params or {}))))
    return entries


def compute_panel(factors: Sequence[FactorRequest], inputs: FactorInputs) -> dict[str, np.ndarray]:
    """Return each requested factor over the whole history.

    Parameters
    ----------
    factors
        ``(label, factor name, parameters)`` triples; parameters left out take the defaults.
    inputs
        OHLCV panels shaped (T, N).

    Returns
    -------
    dict
        ``{label: (T, N) array}``; row t depends on bars <= t only, NaN where an asset has too
        little history or a missing input inside the factor's window.

    Raises
    ------
    ValueError
        As :func:`resolve_requests` does, and naming the factor when it needs volume and
        ``inputs.volume`` is None.
    """
    entries = resolve_requests(factors)
    for _, spec, _ in entries:
        spec.require_volume(inputs.volume is not None)
    data = FullHistory(inputs)  # shared, so factors reuse each other's series and window sums
    exposures: dict[str, np.ndarray] = {}
    with np.errstate(all="ignore"):
        for label, spec, params in entries:
            if spec.kernel is not None:
                value = spec.kernel(data, **params)
            else:
                value = spec.function(inputs, **params)
            # A copy: kernels may hand back a cached series that another label shares.
            value = np.array(np.broadcast_to(value, inputs.shape), dtype=np.float64)
            exposures[label] = value
    return exposures

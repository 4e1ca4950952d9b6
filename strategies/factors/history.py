"""What a factor kernel reads (:class:`FactorData`) and its full-history implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from strategies.factors.series import DERIVED_SERIES, RAW_SERIES
from strategies.factors.windows import window_reduce


@dataclass(frozen=True)
class FactorInputs:
    """OHLCV panels shaped (T, N), oldest bar first, NaN where an asset has no bar.

    ``volume`` is None for close-only sources; factors that need it then refuse to run.
    """

    close: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.close)
        if len(shape) != 2:
            raise ValueError(
                f"FactorInputs: close must be 2-D (bars, assets), received shape {shape}"
            )
        for name in RAW_SERIES:
            value = getattr(self, name)
            if value is None and name == "volume":
                continue
            array = np.asarray(value, dtype=np.float64)
            if array.shape != shape:
                raise ValueError(
                    f"FactorInputs: {name} has shape {array.shape}, expected {shape} like close"
                )
            object.__setattr__(self, name, array)

    @classmethod
    def from_panel(cls, panel: object) -> FactorInputs:
        """Return the inputs of a panel with ``open/high/low/close/volume`` attributes."""
        return cls(
            close=panel.close,
            open=panel.open,
            high=panel.high,  # type: ignore[attr-defined]
            low=panel.low,
            volume=panel.volume,
        )  # type: ignore[attr-defined]

    @property
    def shape(self) -> tuple[int, int]:
        """(bars, assets)."""
        return self.close.shape  # type: ignore[return-value]


class FactorData(Protocol):
    """What a factor kernel may read. On the full history every method returns (T, N) arrays
    (market series (T, 1)); incrementally, (N,) rows (market series (1,)) for the newest bar.
    Row t of anything returned depends on bars <= t only."""

    def series(self, name: str) -> np.ndarray:
        """A raw input (open, high, low, close, volume) or a series of ``DERIVED_SERIES``."""
        ...

    def lag(self, name: str, k: int) -> np.ndarray:
        """Series ``name`` ``k`` bars back (NaN before the first bar)."""
        ...

    def window_sum(self, name: str, length: int) -> np.ndarray:
        """Sum of series ``name`` over the last ``length`` bars; NaN if any is missing."""
        ...

    def window_max(self, name: str, length: int) -> np.ndarray:
        """Maximum of series ``name`` over the last ``length`` bars; NaN if any is missing."""
        ...

    def bar_index(self) -> np.ndarray:
        """The bar's position in the history, as float (bar 0 is the first one seen)."""
        ...

    def cross_sectional_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean over the assets with a value, per bar; NaN when none has one."""
        ...


class FullHistory:
    """:class:`FactorData` over whole (T, N) panels, caching every series and window it builds,
    so factors sharing a series (returns, the window sums of returns) compute it once."""

    def __init__(self, inputs: FactorInputs) -> None:
        self.inputs = inputs
        self._series: dict[str, np.ndarray] = {}
        self._lags: dict[tuple[str, int], np.ndarray] = {}
        self._windows: dict[tuple[str, int, str], np.ndarray] = {}

    def series(self, name: str) -> np.ndarray:
        value = self._series.get(name)
        if value is None:
            if name in RAW_SERIES:
                value = getattr(self.inputs, name)
                if value is None:
                    raise ValueError(f"series {name!r} is not in these inputs (volume is None)")
            else:
                value = DERIVED_SERIES[name](self)
            self._series[name] = value
        return value

    def lag(self, name: str, k: int) -> np.ndarray:
        if k == 0:
            return self.series(name)
        value = self._lags.get((name, k))
        if value is None:
            current = self.series(name)
            value = np.full_like(current, np.nan)
            if k < current.shape[0]:
                value[k:] = current[:-k]
            self._lags[(name, k)] = value
        return value

    def _window(self, name: str, length: int, reducer: str) -> np.ndarray:
        key = (name, length, reducer)
        value = self._windows.get(key)
        if value is None:
            value = window_reduce(self.series(name), length, reducer)
            self._windows[key] = value
        return value

    def window_sum(self, name: str, length: int) -> np.ndarray:
        return self._window(name, length, "sum")

    def window_max(self, name: str, length: int) -> np.ndarray:
        return self._window(name, length, "max")

    def bar_index(self) -> np.ndarray:
        return np.arange(self.inputs.shape[0], dtype=np.float64)[:, None]

    def cross_sectional_mean(self, values: np.ndarray) -> np.ndarray:
        count = np.count_nonzero(~np.isnan(values), axis=1, keepdims=True)
        total = np.nansum(values, axis=1, keepdims=True)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

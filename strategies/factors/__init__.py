"""The factor library: factors over OHLCV panels, their registry, and two ways to compute them.

- :func:`compute_panel` evaluates factors over whole (T, N) panels, vectorised (research,
  evaluation, benchmarks).
- :class:`IncrementalFactors` takes one bar at a time (the factor-update service) and keeps
  running window state instead of recomputing history; it gives the same values.

Conventions, shared by every built-in factor: returns are simple close-to-close returns
``r[t] = close[t] / close[t-1] - 1``; "the universe" is the equal-weight mean of the returns
available at each bar; the exposure at bar t reads bars <= t only; an asset with too little
history, or a missing bar (NaN) anywhere inside a factor's window, gets NaN (excluded, never
zero-filled); values are raw characteristics with their natural sign (volatility is positive),
direction is left to preprocessing and the factor weights. Add a factor with
:func:`register_factor` (a full-history function) or
:func:`~strategies.factors.registry.register_kernel` (a kernel that also runs incrementally).
"""

from strategies.factors import price, risk, liquidity  # noqa: F401, I001  (registers the built-ins, in this order)
from strategies.factors.history import FactorData, FactorInputs
from strategies.factors.incremental import IncrementalFactors
from strategies.factors.panel import compute_panel
from strategies.factors.registry import FACTORS, FactorSpec, register_factor, register_kernel

__all__ = [
    "FACTORS",
    "FactorData",
    "FactorInputs",
    "FactorSpec",
    "IncrementalFactors",
    "compute_panel",
    "register_factor",
    "register_kernel",
]

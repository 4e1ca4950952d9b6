"""Factor definitions computed from a window of bars, and their registry."""

from strategies.factors.basic import FACTORS, FactorSpec, compute_factor

__all__ = ["FACTORS", "FactorSpec", "compute_factor"]

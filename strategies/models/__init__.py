"""Signal models: what turns factor exposures into asset scores.

Factor-weight models (the paper's LSTM, the trailing-IC, ridge and equal-weight baselines)
decide one weight per factor for the next period, from the history of factor-level features;
the asset-level LSTM scores each asset from its own exposure history. Every model has the
same serving interface (``SignalModel.predict``) and is trained walk-forward on the
FactorSnapshots the factor service publishes (``strategies.models.training``).
"""

from strategies.models.base import MODEL_KINDS, ModelError, Prediction, SignalModel

__all__ = ["MODEL_KINDS", "ModelError", "Prediction", "SignalModel"]

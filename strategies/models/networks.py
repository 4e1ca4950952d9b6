"""The two networks and the training objectives (PyTorch).

Factor selection is a gate: the network outputs, per factor, a direction ``tanh(.)`` and a
gate ``sigmoid(.)``; the factor's weight is their product, and an L1 penalty on the gates
(``gate_penalty`` x their mean) pushes the gates of factors that do not help towards zero. At
inference a factor whose gate is below one half is dropped (weight zero, not in ``selected``).
A gate rather than top-k (not differentiable, a fixed k) or a penalty on the weights
themselves (which the unit-gross normalisation would undo): it keeps sign and selection
apart and says plainly which factors were used.
"""

from __future__ import annotations

import torch
from torch import nn

GATE_THRESHOLD = 0.5


class FactorWeightLSTM(nn.Module):
    """Reads (batch, lookback, features) and returns per-factor (direction, gate)."""

    def __init__(self, n_features: int, n_factors: int, hidden: int = 32, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.direction = nn.Linear(hidden, n_factors)
        self.gate = nn.Linear(hidden, n_factors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.lstm(x)
        last = out[:, -1]
        return torch.tanh(self.direction(last)), torch.sigmoid(self.gate(last))


class AssetLSTM(nn.Module):
    """One network shared by all assets: reads each asset's (lookback, factors) exposure
    sequence and returns its score (a predicted return rank)."""

    def __init__(self, n_factors: int, hidden: int = 32, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(n_factors, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, assets, lookback, factors) -> (batch, assets)
        batch, assets, lookback, factors = x.shape
        out, _ = self.lstm(x.reshape(batch * assets, lookback, factors))
        return self.head(out[:, -1]).reshape(batch, assets)


def factor_weights(direction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Soft weights (training): direction x gate, scaled to unit gross per row."""
    raw = direction * gate
    return raw / (raw.abs().sum(dim=-1, keepdim=True) + 1e-6)


def composite(weights: torch.Tensor, exposures: torch.Tensor) -> torch.Tensor:
    """Scores (batch, assets) from weights (batch, factors) and exposures (batch, factors,
    assets) with missing exposures already zero."""
    return torch.einsum("bf,bfn->bn", weights, exposures)


def ic_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Minus the mean, over the batch, of the correlation of scores with rank labels over the
    valid assets: maximising the rank IC of the composite (Pearson on ranked labels, a
    differentiable stand-in for Spearman)."""
    m = mask.float()
    count = m.sum(dim=1).clamp(min=1.0)
    s = scores * m
    y = torch.where(mask, labels, torch.zeros_like(labels))
    s = (s - s.sum(dim=1, keepdim=True) / count[:, None]) * m
    y = (y - y.sum(dim=1, keepdim=True) / count[:, None]) * m
    # The epsilon inside the root: a row with no valid asset (all zero) must give a zero
    # gradient, not the infinite one of sqrt at 0.
    scale = torch.sqrt((s * s).sum(dim=1) * (y * y).sum(dim=1) + 1e-12)
    correlation = (s * y).sum(dim=1) / scale
    return -correlation.mean()


def mean_variance_loss(
    scores: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    risk_aversion: float = 5.0,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Minus (mean - risk_aversion x variance) of a long-only portfolio's period returns over
    the batch; the portfolio holds softmax(score / temperature) over the valid assets (a
    differentiable top-k). Scores are standardised first, so the temperature means the same
    at every scale."""
    m = mask.float()
    count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (scores * m).sum(dim=1, keepdim=True) / count
    std = torch.sqrt((((scores - mean) * m) ** 2).sum(dim=1, keepdim=True) / count + 1e-8)
    z = (scores - mean) / std
    logits = torch.where(mask, z / temperature, torch.full_like(z, -1e9))
    weights = torch.softmax(logits, dim=1)
    period = (weights * torch.where(mask, returns, torch.zeros_like(returns))).sum(dim=1)
    return -(period.mean() - risk_aversion * period.var(unbiased=False))


OBJECTIVES = ("ic", "mean-variance")

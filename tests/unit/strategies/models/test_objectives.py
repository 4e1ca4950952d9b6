"""The training objectives equal their definitions computed with numpy over the valid assets
only, and give the scores a usable gradient (what the networks learn through)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.models.networks import ic_loss, mean_variance_loss

BATCH, ASSETS = 5, 11


def batch(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels (or returns) and a mask with at least four valid assets per row."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(BATCH, ASSETS))
    labels = rng.normal(0.0, 0.02, (BATCH, ASSETS))
    mask = rng.random((BATCH, ASSETS)) < 0.7
    mask[:, :4] = True
    # Masked-out entries must not count: make them loud (labels: NaN, as unknown ones are).
    scores[~mask] = 1e3
    labels[~mask] = np.nan
    return scores, labels, mask


def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in arrays]


def test_ic_loss_is_minus_the_mean_pearson_correlation_over_valid_assets():
    scores, labels, mask = batch(0)
    expected = -np.mean(
        [np.corrcoef(scores[b, mask[b]], labels[b, mask[b]])[0, 1] for b in range(BATCH)]
    )
    loss = ic_loss(*tensors(scores, labels, mask))
    # Not to the bit: the 1e-12 under the square root (the guard of an empty row) shifts it.
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ic_loss_of_scores_equal_to_the_labels_is_minus_one():
    _, labels, mask = batch(1)
    loss = ic_loss(*tensors(np.nan_to_num(labels) * 3.0 + 1.0, labels, mask))
    assert float(loss) == pytest.approx(-1.0, abs=1e-6)


def portfolio_objective_by_hand(
    scores: np.ndarray,
    returns: np.ndarray,
    mask: np.ndarray,
    risk_aversion: float,
    temperature: float,
) -> float:
    periods = []
    for b in range(len(scores)):
        s, r = scores[b, mask[b]], returns[b, mask[b]]
        z = (s - s.mean()) / s.std()  # population std
        w = np.exp(z / temperature - (z / temperature).max())
        w /= w.sum()
        periods.append(float(w @ r))
    values = np.array(periods)
    return -(values.mean() - risk_aversion * values.var())


@pytest.mark.parametrize(("risk_aversion", "temperature"), [(None, None), (2.0, 0.5)])
def test_mean_variance_loss_matches_a_softmax_portfolio_by_hand(
    risk_aversion: float | None, temperature: float | None
):
    """Defaults: risk aversion 5, temperature 0.1."""
    scores, returns, mask = batch(2)
    kwargs = {}
    if risk_aversion is not None:
        kwargs = {"risk_aversion": risk_aversion, "temperature": temperature}
    expected = portfolio_objective_by_hand(
        scores, returns, mask, risk_aversion or 5.0, temperature or 0.1
    )
    loss = mean_variance_loss(*tensors(scores, np.nan_to_num(returns), mask), **kwargs)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_mean_variance_loss_does_not_depend_on_the_scale_of_the_scores():
    """Scores are standardised first: scaling and shifting them changes nothing."""
    scores, returns, mask = batch(3)
    plain = mean_variance_loss(*tensors(scores, np.nan_to_num(returns), mask))
    scaled = mean_variance_loss(*tensors(scores * 40.0 - 7.0, np.nan_to_num(returns), mask))
    assert float(scaled) == pytest.approx(float(plain), rel=1e-6)


@pytest.mark.parametrize("objective", ["ic", "mean-variance"])
def test_gradients_reach_every_valid_score_and_no_masked_one(objective: str):
    scores, labels, mask = batch(4)
    x = torch.from_numpy(scores).requires_grad_(True)
    y, m = tensors(np.nan_to_num(labels), mask)
    if objective == "ic":
        y = torch.from_numpy(labels)  # NaN where masked out: must not poison the gradient
        loss = ic_loss(x, y, m)
    else:
        loss = mean_variance_loss(x, y, m, temperature=1.0)
    loss.backward()
    assert x.grad is not None
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (grad[mask] != 0.0).all()
    assert (grad[~mask] == 0.0).all()


def test_a_row_with_no_valid_asset_gives_a_finite_gradient():
    """The epsilon inside the IC's square root: an empty row adds nothing, not NaN."""
    scores, labels, mask = batch(6)
    mask[2] = False
    x = torch.from_numpy(scores).requires_grad_(True)
    loss = ic_loss(x, torch.from_numpy(np.nan_to_num(labels)), torch.from_numpy(mask))
    loss.backward()
    assert x.grad is not None
    assert np.isfinite(float(loss.detach())) and np.isfinite(x.grad.numpy()).all()
    assert (x.grad.numpy()[2] == 0.0).all()

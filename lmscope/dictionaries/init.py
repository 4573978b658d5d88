"""Data-dependent initialization: activation scale and decoder bias.

- `norm_scale`: the scalar that gives activations a fixed mean squared norm (d_in), as
  SAELens' "expected_average_only_in" normalization does (Anthropic April 2024 update).
  It makes the loss and learning rate independent of the layer's norm (SmolLM2's residual
  stream grows to norms of ~4,600 on outlier positions from layer 12 on).
- `geometric_median`: b_dec starts at the geometric median of the targets (Bricken et al.
  2023), which, unlike the mean, is not dragged by those outlier positions.
- `ridge_map`: a skip transcoder's W_skip starts as the least-squares linear map from input
  to target (ridge-regularized, intercept left to b_dec), the MLP's best linear part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def norm_scale(x: Tensor, d: int) -> float:
    """Scalar s with mean ||s x||^2 == d for x [n, d]."""
    ms = x.float().pow(2).sum(-1).mean().item()
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError("cannot normalize activations: their mean squared norm is 0 or not finite")
    return math.sqrt(d / ms)


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimizing the summed Euclidean distance to `points` [n,
    d]."""
    points = points.float()
    y = points.mean(0)  # [d]
    for _ in range(iters):
        dist = (points - y).norm(dim=1).clamp_min(1e-8)  # [n]
        w = 1.0 / dist
        y_next = (w[:, None] * points).sum(0) / w.sum()
        moved = (y_next - y).norm().item()
        y = y_next
        if moved <= tol * max(1.0, y.norm().item()):
            break
    return y


@torch.no_grad()
def ridge_map(x: Tensor, t: Tensor, ridge: float = 1e-3) -> Tensor:
    """W [d_out, d_in] minimizing ||(t - t_mean) - (x - x_mean) W^T||^2 + lam ||W||^2 for x [n,
    d_in], t [n, d_out].

    lam = ridge * mean eigenvalue of the input covariance, so the fit stays well posed when the
    sample has fewer tokens than dimensions. Solved in float64 (one d_in x d_in linear solve).
    """
    x, t = x.double(), t.double()
    xc, tc = x - x.mean(0), t - t.mean(0)  # [n, d_in], [n, d_out]
    gram = xc.t() @ xc  # [d_in, d_in]
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    gram.diagonal().add_(lam)
    return torch.linalg.solve(gram, xc.t() @ tc).t().float()  # [d_out, d_in]


__all__ = ["geometric_median", "norm_scale", "ridge_map"]

"""Data-dependent initialization: activation scale and decoder bias.

- `norm_scale`: the scalar that gives activations a fixed mean squared norm (d_in), as
  SAELens' "expected_average_only_in" normalization does (Anthropic April 2024 update).
  It makes the loss and learning rate independent of the layer's norm (SmolLM2's residual
  stream grows to norms of ~4,600 on outlier positions from layer 12 on).
- `geometric_median`: b_dec starts at the geometric median of the targets (Bricken et al.
  2023), which, unlike the mean, is not dragged by those outlier positions.
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
    """Weiszfeld's algorithm: the point minimizing the summed Euclidean distance to `points` [n, d]."""
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


__all__ = ["geometric_median", "norm_scale"]

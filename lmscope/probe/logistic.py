"""Logistic-regression probe: L2-regularised, full-batch L-BFGS in torch (no sklearn).

Inputs are centred and divided by one global RMS so the L2 strength means the
same at every layer (residual norms grow with depth); the weights are mapped
back to raw units afterwards.
"""

from __future__ import annotations

import torch

from .probes import Probe


def fit_logistic(
    hook: str, x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 200
) -> Probe:
    """x: [n, d_model], y: [n] in {0, 1}."""
    x = x.double()
    mean = x.mean(0)
    xc = x - mean  # [n, d_model]
    rms = xc.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
    z = xc / rms
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")
    yy = y.double()

    def closure():
        opt.zero_grad()
        logit = z @ w[:-1] + w[-1]
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logit, yy)
            + l2 * w[:-1].pow(2).sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    return Probe(
        kind="logistic",
        hook=hook,
        direction=(w[:-1] / rms).float(),
        bias=float(w[-1]),
        mean=mean.float(),
        info={"l2": l2},
    )

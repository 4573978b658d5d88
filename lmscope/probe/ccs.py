"""Contrast-Consistent Search (Burns et al. 2022, "Discovering Latent Knowledge ... Without
Supervision").

Unsupervised: given each statement x+ and its negation x-, find p(x) =
sigmoid(w.x + b) with p(x+) ~ 1 - p(x-) (consistency) and away from 0.5
(confidence: min(p+, p-)^2). Each side is centred by its own mean and scaled
by its RMS first, so the probe cannot just read "the statement contains
'not'". Several random restarts, keep the lowest loss. The loss is symmetric
in the sign of w, so a few labels fix the sign (and the scale/offset used to
score single statements); the direction itself never sees labels.
Known failure (ANCHORS): CCS can lock onto any salient contrast, and
generalizes poorly across negation.
"""

from __future__ import annotations

import torch

from .probes import Probe, from_direction


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    consistency = (p_pos - (1 - p_neg)).pow(2).mean()
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean()
    return consistency + confidence


def _normalize(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0)
    return xc / xc.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


def fit_ccs(
    hook: str,
    x_pos: torch.Tensor,
    x_neg: torch.Tensor,
    y: torch.Tensor,
    *,
    restarts: int = 10,
    steps: int = 300,
    lr: float = 1e-2,
    n_labels: int = 16,
    seed: int = 0,
) -> Probe:
    """x_pos: [n, d_model] statements, x_neg: [n, d_model] their negations, y: [n] (only n_labels
    used)."""
    zp, zn = _normalize(x_pos.float()), _normalize(x_neg.float())  # [n, d_model] each
    d = zp.shape[1]
    gen = torch.Generator().manual_seed(seed)
    best, best_loss = None, float("inf")
    for _ in range(restarts):
        w = (torch.randn(d, generator=gen) / d**0.5).requires_grad_(True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            # w is NOT normalised during training (as in Burns et al.): the inputs are centred and
            # RMS-scaled, and 300 Adam steps at lr 1e-2 bound how far its norm can grow. Only w's
            # direction is kept: `from_direction` normalises it and fits scale and offset on labels.
            loss = ccs_loss(torch.sigmoid(zp @ w + b), torch.sigmoid(zn @ w + b))
            loss.backward()
            opt.step()
        final = float(loss.detach())
        if final < best_loss:
            best, best_loss = w.detach().clone(), final
    # Sign from a few labels: the CCS score of a pair is 0.5 (p+ + 1 - p-) (Burns et al.).
    k = min(n_labels, len(y))
    idx = torch.randperm(len(y), generator=gen)[:k]
    score = 0.5 * (torch.sigmoid(zp[idx] @ best) + 1 - torch.sigmoid(zn[idx] @ best))
    agree = float(((score > 0.5).long() == y[idx].long()).float().mean())
    direction = best if agree >= 0.5 else -best
    mean = x_pos.float().mean(0)
    return from_direction(
        "ccs",
        hook,
        direction,
        mean,
        x_pos.float()[idx],
        y[idx],
        info={"ccs_loss": best_loss, "n_labels": k, "restarts": restarts},
    )

"""Find what drives a bug: contrastive directions per layer, each with its verified effect.

For a pairs bug file, the direction at layer L is the mean over fit prompts of the residual
stream (blocks.L.resid_post) while the model reads the bad continuation minus while it reads
the good one, averaged over the continuation's positions: the contrastive activation
addition recipe (Panickssery et al. 2024, "Steering Llama 2 via Contrastive Activation
Addition"), with the user's own bad/good pairs as the contrast.

A direction is only a hypothesis until an intervention confirms it. Each one is verified on the
fit prompts (never the held-out ones) with two edits:
- project it out of every residual write (correct/edits.ProjectOut), and
- steer against it at its layer (AddVector(L, -alpha * direction)), alpha from a small grid;
and ranked by how much the mean margin log p(bad) - log p(good) falls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError
from .bugs import BugSet
from .edits import AddVector, ProjectOut
from .measure import _continuation_ids, pair_margins, prompt_ids

ALPHAS = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Direction:
    layer: int
    vector: Tensor
    """[d_model] raw units: mean(bad) - mean(good) at blocks.{layer}.resid_post."""

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.resid_post"


@dataclass(frozen=True)
class Candidate:
    """One edit tried on the fit prompts."""

    name: str
    edit: ProjectOut | AddVector
    layer: int
    fit_margin: float
    """Mean margin on the fit prompts with the edit (lower is better)."""
    fit_bad_rate: float
    fit_added_nats: float | None = None
    """Added loss on fit-side general text (filled when a text budget is checked)."""
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def contrastive_directions(lm, fit: BugSet, layers: Sequence[int]) -> list[Direction]:
    if fit.mode != "pairs":
        raise UserError("contrastive directions need bad/good pairs in the bug file")
    hooks = [f"blocks.{L}.resid_post" for L in layers]
    sums = {L: torch.zeros(lm.d_model, dtype=torch.float64) for L in layers}
    for c in fit.cases:
        p = prompt_ids(lm, c)
        for sign, text in ((1.0, c.bad), (-1.0, c.good)):
            cont = _continuation_ids(lm, text)
            ids = torch.tensor([p + cont], device=lm.device)
            acts = lm.run(ids, capture=hooks).acts
            for L, h in zip(layers, hooks):
                sums[L] += sign * acts[h][0, len(p) : len(p) + len(cont)].double().mean(0).cpu()
    n = len(fit.cases)
    return [Direction(L, (sums[L] / n).float()) for L in layers]


def candidates(
    lm, fit: BugSet, directions: Sequence[Direction], *, alphas=ALPHAS
) -> list[Candidate]:
    """Every direction's edits, scored on the fit prompts (best first)."""
    out: list[Candidate] = []
    for d in directions:
        if not float(d.vector.norm()) > 0:
            continue
        edits: list[tuple[str, ProjectOut | AddVector]] = [
            (
                f"project out L{d.layer} direction",
                ProjectOut(d.vector, label=f"the L{d.layer} bug direction"),
            )
        ]
        for a in alphas:
            edits.append(
                (
                    f"steer L{d.layer} x{-a:g}",
                    AddVector(
                        d.layer, -a * d.vector, label=f"-{a:g} x the L{d.layer} bug direction"
                    ),
                )
            )
        for name, e in edits:
            m = pair_margins(lm, fit.cases, e.runtime(lm))
            out.append(Candidate(name, e, d.layer, float(m.mean()), float((m > 0).double().mean())))
    out.sort(key=lambda c: c.fit_margin)
    return out


__all__ = ["ALPHAS", "Candidate", "Direction", "candidates", "contrastive_directions"]

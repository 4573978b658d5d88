"""Steering vectors from contrastive prompts: ActAdd and CAA-style mean differences.

- ActAdd (Turner et al. 2023, "Activation Addition"): run a prompt pair such as "Love" /
  "Hate", take the difference of the residual streams at `blocks.{layer}.resid_pre` (the
  input of block `layer`) position by position (the shorter prompt is padded), and add
  coeff x that [n_tokens, d_model] difference to the first n_tokens positions of the user's
  prompt, aligned at the start (both prompts begin with BOS, so the BOS row is zero). The
  paper steers GPT-2-XL with "Love" - "Hate" at layer 6, coeff 5.
- CAA (Rimsky et al. 2024, "Contrastive Activation Addition"): the mean, over pairs, of the
  difference at the last token, added at every position. Here with the user's pairs.

Both act at resid_pre (use `site="resid_post"` to read and add at the block output instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import UserError
from ..models.runtime import run

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass
class SteeringVector:
    hook: str
    """Where it is read and added, e.g. blocks.6.resid_pre."""
    vector: torch.Tensor
    """[n_tokens, d_model] (actadd) or [d_model] (mean)."""
    mode: Literal["actadd", "mean"]
    positive: str
    negative: str

    def to_dict(self) -> dict:
        return {
            "hook": self.hook,
            "mode": self.mode,
            "positive": self.positive,
            "negative": self.negative,
            "n_tokens": int(self.vector.shape[0]) if self.vector.dim() == 2 else None,
            "norm": float(self.vector.norm()),
        }


def steering_vector(
    lm: LanguageModel,
    positive: str,
    negative: str,
    *,
    layer: int,
    mode: Literal["actadd", "mean"] = "actadd",
    site: Literal["resid_pre", "resid_post"] = "resid_pre",
) -> SteeringVector:
    """The residual difference positive - negative at blocks.{layer}.{site}."""
    if not 0 <= layer < lm.n_layers:
        raise UserError(
            f"--layer {layer} is out of range: the model has layers 0..{lm.n_layers - 1}"
        )
    hook = f"blocks.{layer}.{site}"
    a, b = lm.to_tokens(positive), lm.to_tokens(negative)
    if mode == "actadd":
        n = max(a.shape[1], b.shape[1])
        a, b = _pad(lm, a, n), _pad(lm, b, n)
    ra = run(lm, a, capture=[hook]).acts[hook][0]  # [n, d_model]
    rb = run(lm, b, capture=[hook]).acts[hook][0]
    vec = (ra - rb) if mode == "actadd" else (ra[-1] - rb[-1])
    return SteeringVector(hook, vec.float(), mode, positive, negative)


def _pad(lm: LanguageModel, toks: torch.Tensor, n: int) -> torch.Tensor:
    """Right-pad with the space token (as ActAdd does), or the pad/eos token."""
    if toks.shape[1] >= n:
        return toks
    ids = lm.tokenizer(" ", add_special_tokens=False)["input_ids"]
    pad = ids[0] if len(ids) == 1 else (lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id or 0)
    extra = torch.full((1, n - toks.shape[1]), pad, dtype=toks.dtype, device=toks.device)
    return torch.cat([toks, extra], 1)


def vector_edits(sv: SteeringVector, coeff: float) -> dict:
    """{hook: edit} adding coeff x the vector (front-aligned for actadd, everywhere for mean)."""
    v = sv.vector * coeff

    def edit(x: torch.Tensor) -> torch.Tensor:
        vv = v.to(device=x.device, dtype=x.dtype)
        if vv.dim() == 1:
            return x + vv
        n = min(vv.shape[0], x.shape[1])
        y = x.clone()
        y[:, :n] = y[:, :n] + vv[:n]
        return y

    return {sv.hook: edit}

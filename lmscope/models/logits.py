"""The last step of the forward pass: unembedding and final-logit soft-capping.

Gemma 2 (and any config with `final_logit_softcapping`) squashes the unembedded logits,

    logits = c * tanh(z / c),        z = ln_final @ W_U^T,    c = final_logit_softcapping

(Gemma Team 2024, "Gemma 2", sec. 2; Gemma 3 270M has no cap: its config says None). The
transformers forward applies it, so the model's logits and probabilities already include it;
what does not is anything that builds logits from W_U by hand. Attribution graphs differentiate
a *de-meaned* logit, l_v - mean_u l_u, with respect to what reaches the final norm; with the cap
that gradient is not W_U[v] - mean(W_U) but

    d(l_v - mean_u l_u)/d ln_final = s_v W_U[v] - mean_u s_u W_U[u],   s_u = 1 - (l_u / c)^2,

since d/dz c tanh(z/c) = 1 - tanh^2(z/c) = 1 - (l/c)^2: the slope comes straight from the
capped logits at the prompt, no arctanh needed. Without a cap every s_u = 1 and this is the
plain de-meaned unembedding. The cap is the one nonlinearity left after the final norm is
frozen, so a logit node's edges are exact to first order around the prompt (the slope is taken
there), as the frozen norms' and attention patterns' are exact on the prompt itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .load import LanguageModel


def final_logit_softcap(lm: LanguageModel) -> float | None:
    """The cap c of the final logits (Gemma 2: 30.0), or None when the model has none."""
    cfg = lm.model.config
    c = getattr(cfg, "final_logit_softcapping", None)
    if c is None and hasattr(cfg, "get_text_config"):
        c = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
    return float(c) if c else None


def softcap(z: Tensor, cap: float | None) -> Tensor:
    """c * tanh(z / c) (the identity without a cap): what the model does to unembedded logits."""
    return z if cap is None else cap * torch.tanh(z / cap)


def demeaned_logit_directions(lm: LanguageModel, logits: Tensor, ids: list[int]) -> Tensor:
    """[n_ids, d_model] gradients of the de-meaned logits of `ids` with respect to the final
    norm's output at one position, given that position's (capped) logits [vocab].

    The logit nodes of an attribution graph inject these at ln_final (see the module docstring
    for the formula); without a cap they are W_U[ids] - W_U.mean(0).
    """
    W_U = lm.model.get_output_embeddings().weight.detach()  # [vocab, d_model]
    cap = final_logit_softcap(lm)
    if cap is None:
        return W_U[ids] - W_U.mean(0)
    slope = (1 - (logits.detach().float() / cap).pow(2)).clamp_min(0)  # [vocab]
    mean = (slope @ W_U.float()) / W_U.shape[0]  # [d_model]
    return (slope[ids, None] * W_U[ids].float() - mean).to(W_U.dtype)


__all__ = ["demeaned_logit_directions", "final_logit_softcap", "softcap"]

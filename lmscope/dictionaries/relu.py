"""ReLU + L1 sparse autoencoder / transcoder (Bricken et al. 2023, with Anthropic's April 2024
update).

f = ReLU(W_enc^T (x - b_dec) + b_enc), and the sparsity penalty is the L1 norm of the
activations weighted by the decoder row norms, lambda * sum_i f_i ||W_dec_i||
("Circuits Updates, April 2024"). Weighting by the norm removes the incentive to shrink
activations while growing decoder rows, so the decoder needs no unit-norm constraint;
rows start at norm 0.1. The saved file keeps these norms (SAELens' `fold_W_dec_norm()`
folds them into the encoder exactly, since f_i * n_i with W_dec_i / n_i decodes the same).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DictionaryConfig, SparseDictionary, _Terms


class ReLUDictionary(SparseDictionary):
    """ReLU activation; L1 penalty weighted by decoder row norms."""

    arch = "relu"

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def _train_terms(self, x_n: Tensor, target_n: Tensor, dead_mask: Tensor | None) -> _Terms:
        acts = torch.relu(self.pre_acts_normalized(x_n))  # [batch, d_sae]
        recon = self.decode_normalized(acts, x_n)  # [batch, d_out]
        norms = self.W_dec.norm(dim=1)  # [d_sae]
        sparsity = self.cfg.l1_coeff * (acts.float() * norms).sum(-1).mean()
        active = acts.detach() > 0
        return _Terms(
            recon, active.sum(1).float().mean(), active.any(0), sparsity, recon.new_zeros(())
        )


__all__ = ["ReLUDictionary"]

"""BatchTopK sparse autoencoder / transcoder (Bussmann, Leask & Nanda 2024).

Training keeps the k x batch largest activations of the whole batch instead of k per
token, so easy tokens use fewer latents and hard ones more, at the same average L0.
That rule depends on the batch, so inference uses a single threshold instead: a
running mean of each training batch's smallest kept activation. At inference the
dictionary is a JumpReLU with that threshold for every latent, which is exactly how
SAELens saves it (`architecture: jumprelu`, `threshold = ones * topk_threshold`).

The batch-wide selection is turned into a padded per-token code [batch, k_max]
(padding has value 0, so it adds nothing and gets no gradient), and then runs through
the same sparse kernels as TopK.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DictionaryConfig, TopKOutput
from .topk import TopKDictionary


def batch_topk_codes(pre: Tensor, k: int) -> TopKOutput:
    """[batch, d_sae] -> the k*batch largest ReLU'd activations of the batch, as a padded code.

    Returns values/indices [batch, k_max] where k_max is the largest per-token count.
    """
    batch, d_sae = pre.shape
    flat = pre.clamp_min(0).reshape(-1)  # [batch*d_sae]
    n_keep = min(k * batch, flat.numel())
    values, flat_idx = flat.topk(n_keep, sorted=False)  # [n_keep]
    rows = torch.div(flat_idx, d_sae, rounding_mode="floor")
    cols = flat_idx - rows * d_sae
    order = torch.argsort(rows, stable=True)
    rows, cols, values = rows[order], cols[order], values[order]
    counts = torch.bincount(rows, minlength=batch)  # [batch]
    k_max = max(int(counts.max()), 1)
    starts = torch.cumsum(counts, 0) - counts  # [batch] first slot of each token
    slot = torch.arange(rows.numel(), device=pre.device) - starts[rows]
    out_v = pre.new_zeros(batch, k_max)
    out_i = torch.zeros(batch, k_max, dtype=torch.long, device=pre.device)
    out_v[rows, slot] = values
    out_i[rows, slot] = cols
    return TopKOutput(out_v, out_i)


class BatchTopKDictionary(TopKDictionary):
    """BatchTopK in training; a JumpReLU with one learned-by-averaging threshold at inference."""

    arch = "batchtopk"

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("topk_threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    @property
    def threshold(self) -> Tensor:
        """[d_sae] inference threshold (the same value for every latent)."""
        return self.topk_threshold.expand(self.d_sae)

    def activation(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.topk_threshold.to(pre.dtype))  # [batch, d_sae]

    def encode_topk(self, x: Tensor) -> TopKOutput:
        raise NotImplementedError(
            "BatchTopK has a variable number of latents per token; use encode()"
        )

    def _select(self, pre: Tensor) -> TopKOutput:
        codes = batch_topk_codes(pre, self.cfg.k)
        if self.training:
            self._update_threshold(codes.values)
        return codes

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        kept = values[values > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().float()
        if int(self.threshold_updates) == 0:
            self.topk_threshold.copy_(smallest)
        else:
            m = self.cfg.threshold_momentum
            self.topk_threshold.mul_(1 - m).add_(m * smallest)
        self.threshold_updates += 1


__all__ = ["BatchTopKDictionary", "batch_topk_codes"]

"""TopK sparse autoencoder / transcoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders").

Each token keeps its k largest encoder pre-activations (then ReLU) and zeroes the rest,
so the sparsity is set directly instead of through an L1 penalty. Training runs on the
sparse code (values, indices) [batch, k] end to end (kernels.py): after the one dense
encoder matmul, decoding and every gradient touch only the k active latents.

AuxK (Gao et al. 2024 App. A.2): latents that have not fired for many tokens get a
second, auxiliary reconstruction: the top `aux_k` *dead* latents of each token
reconstruct the main reconstruction's error, weighted by `aux_coeff` (1/32). Its
gradient pulls dead encoder columns toward directions that are still unexplained.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native
from .base import DictionaryConfig, SparseDictionary, TopKOutput, _Terms
from .kernels import sparse_decode, sparse_encoder_grad, subset_decode

DENSE_AUX_RATIO = 4
"""AuxK runs as dense GEMMs over the dead columns while n_dead <= this x k_aux (twice this
under bf16/fp16 autocast, whose GEMMs are ~4x faster), else through the sparse kernels.
Measured on one core at the whole-model shape (bench/profile_train_step.py, k_aux 288,
d_sae 2,304): fp32 AuxK cost 49 ms dense vs 85 ms sparse at 576 dead latents and 148 vs
99 ms at 2,304 (crossover ~5 x k_aux); bf16 27 vs 69 ms at 576 and 67 vs 100 ms at 2,304. With
the native sparse kernels, the whole step at 25% dead, bf16, 2 threads: 45.7 ms dense vs 65.5
sparse. Its buffers are padded to AUX_BUCKET columns: unpadded, their size changed every step
and the 30-dictionary shared pass's peak RSS rose from 3.5 to 5.4 GB (glibc heap retention);
padded, 3.57 GB (sparse: 3.62)."""


AUX_BUCKET = 256
"""The dense AuxK path's column count is rounded up to a multiple of this (with live latents
whose codes stay 0)."""


def topk_codes(pre: Tensor, k: int, bias: Tensor | None = None) -> TopKOutput:
    """[batch, d_sae] pre-activations (plus `bias` [d_sae] float32, if given: the values are then
    the float32 sums) -> the k largest per token, ReLU'd ([batch, k] each), in no particular
    order. On CPU through the native kernel (native.py; 4-5x torch.topk), else torch.topk: the
    same entries, ties aside."""
    got = native.topk(pre, k, bias) if pre.dim() == 2 and not pre.requires_grad else None
    if got is None:
        if bias is not None:
            pre = pre.float() + bias
        got = pre.topk(k, dim=-1, sorted=False)
    values, indices = got
    return TopKOutput(values.clamp_min(0), indices)


def fire_counts(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """int64 [d_sae]: tokens on which each latent has a positive value in the sparse code
    values/indices [batch, k] (a latent appears at most once per token)."""
    return torch.bincount(indices[values > 0], minlength=d_sae)


def fired_mask(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """bool [d_sae]: latents with a positive value somewhere in the sparse code."""
    return fire_counts(values, indices, d_sae) > 0


def auxk_loss(
    dict_: SparseDictionary,
    pre: Tensor,
    x_in: Tensor,
    residual: Tensor,
    dead_mask: Tensor | None,
    pre_bias: Tensor | None = None,
) -> Tensor:
    """AuxK: squared error of reconstructing `residual` [batch, d_out] from the top dead latents.

    `pre` [batch, d_sae] are the (no-grad) encoder pre-activations (without the encoder bias
    if `pre_bias` is given: it is then added where they are ranked), `x_in` the encoder input
    with its autograd history. The reconstruction has no bias (it predicts an error).
    """
    zero = residual.new_zeros(())
    if dead_mask is None:
        return zero
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return zero
    k_aux = min(dict_.cfg.resolved_aux_k, n_dead)
    dev = x_in.device.type
    half = torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) != torch.float32
    dense = n_dead <= DENSE_AUX_RATIO * (2 if half else 1) * k_aux
    with torch.no_grad():
        dead_ids = dead_mask.to(pre.device).nonzero().squeeze(1)  # [n_dead]
        cols = dead_ids
        if dense and n_dead % AUX_BUCKET:
            # Pad the dead columns with live ones up to a multiple of AUX_BUCKET, whose codes
            # stay 0 (no loss, no gradient): the per-step buffers then come in a few sizes,
            # which the allocator reuses, instead of a new size every step.
            n_pad = min(-n_dead % AUX_BUCKET, dead_mask.numel() - n_dead)
            live = (~dead_mask).to(pre.device).nonzero().squeeze(1)[:n_pad]
            cols = torch.cat([dead_ids, live])
        # Rank only the dead columns ([batch, n_dead], usually a small slice of d_sae).
        pre_sub = pre.index_select(1, cols)  # [batch, n_cols]
        bias = None if pre_bias is None else pre_bias.index_select(0, dead_ids)
        local = topk_codes(pre_sub[:, :n_dead], k_aux, bias)  # [batch, k_aux] into dead_ids
    if dense:
        # k_aux is a large share of the dead columns: a dense code over them, GEMMs throughout.
        codes = pre_sub.new_zeros(pre_sub.shape, dtype=local.values.dtype)
        codes.scatter_(1, local.indices, local.values)
        e_hat = subset_decode(x_in, dict_.W_enc, dict_.b_enc, dict_.W_dec, codes, cols)
    else:
        indices = dead_ids[local.indices]  # [batch, k_aux] latent ids
        values = sparse_encoder_grad(x_in, dict_.W_enc, dict_.b_enc, local.values, indices)
        e_hat = sparse_decode(values, indices, dict_.W_dec)  # [batch, d_out]
    return (e_hat.float() - residual.float()).pow(2).sum(-1).mean()


class TopKDictionary(SparseDictionary):
    """TopK activation: exactly k active latents per token (fewer if some are <= 0)."""

    arch = "topk"

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)

    # --- inference ---------------------------------------------------------------------
    def activation(self, pre: Tensor) -> Tensor:
        codes = topk_codes(pre, self.cfg.k)
        return torch.zeros_like(pre).scatter_(-1, codes.indices, codes.values)  # [batch, d_sae]

    def encode_topk(self, x: Tensor) -> TopKOutput:
        """[batch, d_in] raw -> sparse code TopKOutput(values [batch, k], indices [batch, k])
        (units as encode)."""
        codes = topk_codes(self.pre_acts_normalized(x * self.act_scale), self.cfg.k)
        return TopKOutput(codes.values / self.act_scale_out, codes.indices)

    def decode_sparse(self, values: Tensor, indices: Tensor, x: Tensor | None = None) -> Tensor:
        """Sparse code [batch, k] -> [batch, d_out] raw reconstruction (skip transcoders need x)."""
        out = (
            sparse_decode(values * self.act_scale_out, indices, self.W_dec) + self.b_dec
        )  # [batch, d_out]
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder needs its input to decode: pass x=")
            out = out + (x * self.act_scale) @ self.W_skip.t()
        return out / self.act_scale_out

    # --- training ----------------------------------------------------------------------
    def _sparse_forward(self, x_n: Tensor) -> tuple[Tensor, Tensor, TopKOutput, Tensor | None]:
        """Encoder input (with grad), no-grad pre-activations, the sparse code with grad, and
        the encoder bias where the pre-activations are without it (the native path), else None.
        """
        x_in = x_n - self.b_dec if self.apply_b_dec_to_input else x_n  # [batch, d_in]
        pre_bias = None
        with torch.no_grad():
            if type(self)._select is _plain_select and native.lib() is not None:
                # the bias is added where the native top-k reads each row: addmm's first step,
                # copying the bias into the whole [batch, d_sae] output, cost as much (2 cores)
                pre, pre_bias = x_in @ self.W_enc, self.b_enc.detach()  # [batch, d_sae]
            else:
                pre = torch.addmm(self.b_enc, x_in, self.W_enc)  # [batch, d_sae]
        codes = self._select(pre) if pre_bias is None else topk_codes(pre, self.cfg.k, pre_bias)
        values = sparse_encoder_grad(x_in, self.W_enc, self.b_enc, codes.values, codes.indices)
        return x_in, pre, TopKOutput(values, codes.indices), pre_bias

    def _select(self, pre: Tensor) -> TopKOutput:
        return topk_codes(pre, self.cfg.k)

    def _train_terms(self, x_n: Tensor, target_n: Tensor, dead_mask: Tensor | None) -> _Terms:
        x_in, pre, codes, pre_bias = self._sparse_forward(x_n)
        recon = (
            sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec
        )  # [batch, d_out]
        if self.W_skip is not None:
            recon = recon + x_n @ self.W_skip.t()
        residual = (target_n - recon).detach()
        aux = auxk_loss(self, pre, x_in, residual, dead_mask, pre_bias)
        active = codes.values.detach() > 0
        l0 = active.sum(1).float().mean()
        counts = fire_counts(codes.values.detach(), codes.indices, self.d_sae)
        return _Terms(recon, l0, counts > 0, recon.new_zeros(()), aux, counts)


_plain_select = TopKDictionary._select
"""TopK's own selection: where a subclass or a test replaces _select, the pre-activations keep
their bias and go through it."""

__all__ = ["TopKDictionary", "auxk_loss", "fire_counts", "fired_mask", "topk_codes"]

"""A TopK dictionary whose latents are split across ranks (--shard-features).

For dictionaries too big for one device (Templeton et al. 2024 trained 34M latents), rank r
of R holds the encoder columns W_enc[:, lo:hi], b_enc[lo:hi] and decoder rows
W_dec[lo:hi] of its slice of latents; b_dec (and a transcoder's skip) are replicated.
Every rank sees the same batch. One step:

1. each rank computes its pre-activations [batch, d_local] and their local top-k;
2. (values, global indices) [batch, k] are all-gathered and the global top-k of the R*k
   candidates is taken; the global top-k is always among them, so this equals the
   unsharded TopK exactly (up to ties);
3. each rank decodes the selected latents it owns and the partial reconstructions are
   all-reduced (sum). The backward of that all-reduce is the identity, since every rank
   computes the same loss; the encoder input's gradient is summed over ranks instead
   (Megatron-LM's pair of "reduce" / "copy" regions, Shoeybi et al. 2019).

AuxK runs the same way over the dead latents. Parameter gradients are then purely local
and the optimizer, decoder renormalization and parallel-gradient removal stay per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as td
import torch.nn as nn
from torch import Tensor

from .. import dist
from ..dist import DistInfo, split_sizes
from .base import SparseDictionary, TopKOutput, TrainOutput
from .kernels import sparse_decode, sparse_encoder_grad
from .registry import build


class _ReduceFromShards(torch.autograd.Function):
    """Forward: sum of per-rank partial results. Backward: identity (the loss is replicated)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        return dist.all_reduce_sum_(t)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


class _CopyToShards(torch.autograd.Function):
    """Forward: identity on a replicated input. Backward: sum the per-rank gradients."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return dist.all_reduce_sum_(g.clone())


def global_topk(pre: Tensor, k: int, offset: int) -> TopKOutput:
    """Top-k over the latents of all ranks from this rank's pre-activations [batch, d_local].

    Returns ReLU'd values and *global* indices [batch, k], identical on every rank.
    """
    k_local = min(k, pre.shape[1])
    v, i = pre.topk(k_local, dim=-1, sorted=False)  # [batch, k_local]
    v_all = dist.all_gather_cat(v, dim=1)  # [batch, R*k_local]
    i_all = dist.all_gather_cat(i + offset, dim=1)
    top_v, pos = v_all.topk(k, dim=-1, sorted=False)  # [batch, k]
    return TopKOutput(top_v.clamp_min(0), i_all.gather(1, pos))


def gather_uneven(t: Tensor, dim: int, sizes: list[int]) -> Tensor:
    """All-gather tensors whose size along `dim` differs per rank (padded to the largest)."""
    if not dist.is_active():
        return t
    biggest = max(sizes)
    pad_shape = list(t.shape)
    pad_shape[dim] = biggest - t.shape[dim]
    padded = torch.cat([t, t.new_zeros(pad_shape)], dim=dim).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    td.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


class ShardedTopK(nn.Module):
    """This rank's slice of a TopK dictionary; `loss` matches SparseDictionary.loss."""

    def __init__(self, full: SparseDictionary, info: DistInfo) -> None:
        super().__init__()
        if full.cfg.arch != "topk":
            raise ValueError("feature sharding supports arch topk only")
        self.cfg, self.info = full.cfg, info
        self.sizes = split_sizes(full.d_sae, info.world_size)
        self.lo = sum(self.sizes[: info.rank])
        self.hi = self.lo + self.sizes[info.rank]
        self.apply_b_dec_to_input = full.apply_b_dec_to_input
        self.W_enc = nn.Parameter(
            full.W_enc.detach()[:, self.lo : self.hi].clone()
        )  # [d_in, d_local]
        self.b_enc = nn.Parameter(full.b_enc.detach()[self.lo : self.hi].clone())  # [d_local]
        self.W_dec = nn.Parameter(
            full.W_dec.detach()[self.lo : self.hi].clone()
        )  # [d_local, d_out]
        self.b_dec = nn.Parameter(full.b_dec.detach().clone())  # [d_out], replicated
        self.W_skip = (
            nn.Parameter(full.W_skip.detach().clone()) if full.W_skip is not None else None
        )
        self.register_buffer("act_scale", full.act_scale.detach().clone())
        self.register_buffer("act_scale_out", full.act_scale_out.detach().clone())

    @property
    def d_local(self) -> int:
        return self.hi - self.lo

    def _owned(self, codes: TopKOutput) -> tuple[Tensor, Tensor]:
        """Values of this rank's latents (0 elsewhere) and their local indices (0 elsewhere)."""
        own = (codes.indices >= self.lo) & (codes.indices < self.hi)
        return codes.values.where(own, 0.0), (codes.indices - self.lo).where(own, 0)

    def loss(
        self, x: Tensor, target: Tensor | None = None, *, dead_mask: Tensor | None = None
    ) -> TrainOutput:
        """Same objective as the unsharded TopK (mse + aux_coeff * AuxK); `dead_mask` is local
        [d_local]."""
        target = x if target is None else target
        x_n, t_n = x * self.act_scale, target * self.act_scale_out
        x_in = x_n - self.b_dec if self.apply_b_dec_to_input else x_n  # [batch, d_in]
        x_sh = _CopyToShards.apply(x_in)
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)  # [batch, d_local]
        codes = global_topk(pre, self.cfg.k, self.lo)
        vals, idx = self._owned(codes)
        v = sparse_encoder_grad(x_sh, self.W_enc, self.b_enc, vals, idx)
        recon = (
            _ReduceFromShards.apply(sparse_decode(v, idx, self.W_dec)) + self.b_dec
        )  # [batch, d_out]
        if self.W_skip is not None:
            recon = recon + x_n @ self.W_skip.t()
        residual = (t_n - recon).detach()
        aux = self._auxk(pre, x_sh, residual, dead_mask)
        err = recon.float() - t_n.float()
        sq = err.pow(2).sum()
        mse = sq / x.shape[0]
        with torch.no_grad():
            var = (t_n.float() - t_n.float().mean(0)).pow(2).sum().clamp_min(1e-12)
            active = codes.values > 0
            counts = torch.bincount(idx[active & (vals > 0)], minlength=self.d_local)
            fired = counts > 0
        loss = mse + self.cfg.aux_coeff * aux
        zero = mse.new_zeros(())
        return TrainOutput(
            loss,
            mse.detach(),
            sq.detach() / var,
            active.sum(1).float().mean(),
            aux.detach(),
            fired,
            zero,
            counts,
        )

    def _auxk(
        self, pre: Tensor, x_sh: Tensor, residual: Tensor, dead_mask: Tensor | None
    ) -> Tensor:
        zero = residual.new_zeros(())
        if dead_mask is None:
            return zero
        n_dead = dist.all_reduce_sum_(dead_mask.sum().reshape(1).long()).item()
        if n_dead == 0:
            return zero
        k_aux = min(self.cfg.resolved_aux_k, int(n_dead))
        with torch.no_grad():
            masked = pre.masked_fill(~dead_mask, float("-inf"))  # [batch, d_local]
            codes = global_topk(masked, k_aux, self.lo)
        vals, idx = self._owned(codes)
        v = sparse_encoder_grad(x_sh, self.W_enc, self.b_enc, vals, idx)
        e_hat = _ReduceFromShards.apply(sparse_decode(v, idx, self.W_dec))  # [batch, d_out]
        return (e_hat.float() - residual.float()).pow(2).sum(-1).mean()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Gao et al. 2024 App. A.4, row by row (rows are local)."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def gather_full(self) -> SparseDictionary:
        """The whole dictionary (on every rank; rank 0 saves it)."""
        full = build(self.cfg)
        full.W_enc.copy_(gather_uneven(self.W_enc.float(), 1, self.sizes))
        full.b_enc.copy_(gather_uneven(self.b_enc.float(), 0, self.sizes))
        full.W_dec.copy_(gather_uneven(self.W_dec.float(), 0, self.sizes))
        full.b_dec.copy_(self.b_dec)
        if self.W_skip is not None:
            full.W_skip.copy_(self.W_skip)
        full.act_scale.copy_(self.act_scale)
        full.act_scale_out.copy_(self.act_scale_out)
        return full


__all__ = ["ShardedTopK", "gather_uneven", "global_topk"]

"""A cross-layer transcoder whose latents are split across ranks (`lmscope train --clt
--shard-features` under torchrun).

The decoders hold L(L+1)/2 * n * d numbers (SmolLM2 at n = 4 d: 617M, 7.4 GB in float32 with
Adam's two moments), so the CLT is split along the latent dimension, the way sharded.py splits
one dictionary: rank r of R holds latents lo:hi of EVERY layer, i.e. W_enc[:, :, lo:hi],
b_enc[:, lo:hi], threshold[:, lo:hi] and the decoder rows W_dec[l][lo:hi] of every source layer,
so each rank holds 1/R of the encoders and of the decoders. b_dec and the act scales are
replicated. Every rank sees the same batch of all layers. One step:

1. topk: each rank ranks its own latents of each layer; (values, global indices) [L, B, k] are
   all-gathered and the global top-k of each layer is taken, which always lies among the
   candidates, so the selection equals the unsharded CLT's (up to ties). jumprelu needs no
   selection: a latent fires on its own threshold.
2. each rank decodes the selected latents it holds into every target layer; the partial
   reconstructions [L, B, d] are all-reduced (sum), with an identity backward (every rank
   computes the same loss), as sharded.py's _ReduceFromShards.
3. the parameter gradients are then local; Adam, the decoder renormalization (each latent's
   whole decoder lies on one rank) and the parallel-gradient removal stay per rank.

The input needs no gradient (a CLT reads the model's activations and subtracts nothing), so
there is no copy region on the input side.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .. import dist
from ..dist import DistInfo, split_sizes
from .clt import CLTTrainOutput, Comm, CrossLayerTranscoder, clt_loss
from .sharded import _ReduceFromShards, gather_uneven


class Shards(Comm):
    """Comm over the ranks of a latent-sharded CLT (see clt.Comm)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def topk(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        k_local = min(k, pre.shape[-1])
        v, i = pre.topk(k_local, dim=-1, sorted=False)  # [L, B, k_local]
        v_all = dist.all_gather_cat(v, dim=-1)  # [L, B, R * k_local]
        i_all = dist.all_gather_cat(i + self.lo, dim=-1)
        top_v, pos = v_all.topk(k, dim=-1, sorted=False)
        return top_v.clamp_min(0), i_all.gather(-1, pos)

    def own(self, values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        mine = (indices >= self.lo) & (indices < self.hi)
        return values.where(mine, 0.0), (indices - self.lo).where(mine, 0)

    def reduce(self, t: Tensor) -> Tensor:
        return _ReduceFromShards.apply(t)

    def sum_(self, t: Tensor) -> Tensor:
        return dist.all_reduce_sum_(t)


class ShardedCLT(nn.Module):
    """This rank's slice of a CrossLayerTranscoder's latents; `loss` matches the whole CLT's."""

    def __init__(self, full: CrossLayerTranscoder, info: DistInfo) -> None:
        super().__init__()
        cfg = full.cfg
        if cfg.d_sae < info.world_size:
            raise ValueError(
                f"cannot split {cfg.d_sae} latents per layer over {info.world_size} ranks"
            )
        self.cfg, self.info = cfg, info
        self.sizes = split_sizes(cfg.d_sae, info.world_size)
        lo = sum(self.sizes[: info.rank])
        hi = lo + self.sizes[info.rank]
        self.comm = Shards(lo, hi)
        self.n_layers, self.d_model = full.n_layers, full.d_model

        def part(t: Tensor, dim: int) -> nn.Parameter:
            return nn.Parameter(t.detach().narrow(dim, lo, hi - lo).clone())

        self.W_enc = part(full.W_enc, 2)  # [L, d, n_local]
        self.b_enc = part(full.b_enc, 1)  # [L, n_local]
        self.threshold = part(full.threshold, 1) if full.threshold is not None else None
        self.W_dec = nn.ParameterList([part(w, 0) for w in full.W_dec])  # [n_local, L - l, d]
        self.b_dec = nn.Parameter(full.b_dec.detach().clone())  # replicated
        self.register_buffer("act_scale_in", full.act_scale_in.detach().clone())
        self.register_buffer("act_scale_out", full.act_scale_out.detach().clone())

    @property
    def lo(self) -> int:
        return self.comm.lo

    @property
    def d_local(self) -> int:
        return self.comm.hi - self.comm.lo

    def loss(
        self, x_in: Tensor, target: Tensor, *, dead_mask: Tensor | None = None
    ) -> CLTTrainOutput:
        """The whole CLT's objective; `dead_mask` and the returned `fired` are local
        [L, n_local]."""
        return clt_loss(self, x_in, target, dead_mask, self.comm)

    # The decoder upkeep is per latent, and each latent's whole decoder is on this rank.
    normalize_decoder_ = CrossLayerTranscoder.normalize_decoder_
    remove_parallel_grad_ = CrossLayerTranscoder.remove_parallel_grad_
    constrain_ = CrossLayerTranscoder.constrain_

    @torch.no_grad()
    def gather_full(self) -> CrossLayerTranscoder:
        """The whole CLT (on every rank; rank 0 saves it)."""
        full = CrossLayerTranscoder(self.cfg)
        full.W_enc.copy_(gather_uneven(self.W_enc.float(), 2, self.sizes))
        full.b_enc.copy_(gather_uneven(self.b_enc.float(), 1, self.sizes))
        if self.threshold is not None:
            full.threshold.copy_(gather_uneven(self.threshold.float(), 1, self.sizes))
        for w_full, w in zip(full.W_dec, self.W_dec):
            w_full.copy_(gather_uneven(w.float(), 0, self.sizes))
        full.b_dec.copy_(self.b_dec)
        full.act_scale_in.copy_(self.act_scale_in)
        full.act_scale_out.copy_(self.act_scale_out)
        return full


__all__ = ["ShardedCLT", "Shards"]

"""The cross-layer transcoder's autograd kernels: all layers at once, memory one layer at a time.

- `stacked_jumprelu` / `stacked_step`: jumprelu.py's straight-through JumpReLU and step for
  pre-activations [L, B, n] and thresholds [L, n] (the threshold's gradient is summed over the
  batch only).
- `stacked_sparse_encode`: the TopK values with a gradient only through the selected entries
  (kernels.sparse_encoder_grad for every layer in one autograd node; per layer, W_enc[l] being a
  view, autograd would materialize a dense [L, d, n] gradient per layer).
- `clt_decode`: out[t] = sum_{l <= t} a[l] @ W_dec[l][:, t - l], dense or sparse code.

tests/test_clt.py checks the gradients against plain dense autograd.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .kernels import _sparse_t_matmul


# --- the activation functions over all layers at once -------------------------------------
def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """pre [L, B, n] * H(pre - theta[L, 1, n]) with jumprelu.py's straight-through threshold
    gradient; theta's gradient is summed over the batch (dim 1) only."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta[:, None])

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        th = theta[:, None]
        grad_pre = grad * (pre > th)
        k = _rectangle((pre - th) / ctx.eps)
        grad_theta = (-(th / ctx.eps) * k * grad).sum(1)  # [L, n]
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta) with the straight-through threshold gradient (for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta[:, None]).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        k = _rectangle((pre - theta[:, None]) / ctx.eps)
        return torch.zeros_like(pre), (-(1.0 / ctx.eps) * k * grad).sum(1), None


class _StackedSparseEncode(torch.autograd.Function):
    """values[l, b, j] = (x[l, b] @ W_enc[l] + b_enc[l])[indices[l, b, j]] with gradients only
    through those entries, for all layers at once (kernels.sparse_encoder_grad per layer would
    make autograd materialize a dense [L, d, n] gradient per layer when W_enc[l] is a view).

    The input x is data (a CLT subtracts nothing before encoding), so it gets no gradient unless
    asked (the sharded CLT's copy region asks)."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor):
        ctx.save_for_backward(x, W_enc, indices, values > 0)
        return values

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x, W_enc, indices, active = ctx.saved_tensors
        L, d, n = W_enc.shape
        g = (grad_values * active).to(W_enc.dtype)  # [L, B, k]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.stack(
                [
                    nn.functional.embedding_bag(
                        indices[i], W_enc[i].t().contiguous(), per_sample_weights=g[i], mode="sum"
                    )
                    for i in range(L)
                ]
            ).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = torch.empty_like(W_enc)
            for i in range(L):
                grad_W[i] = _sparse_t_matmul(indices[i], g[i], x[i].to(W_enc.dtype), n).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(L, n, dtype=W_enc.dtype, device=W_enc.device)
            for i in range(L):
                grad_b[i].index_add_(0, indices[i].reshape(-1), g[i].reshape(-1))
        return grad_x, grad_W, grad_b, None, None


class _CLTDecode(torch.autograd.Function):
    """out[t] = sum_{l <= t} a[l] @ W_dec[l][:, t - l] (no bias), for a dense code a [L, B, n]
    (indices None) or a sparse one (values, indices [L, B, k]).

    Written out because the obvious autograd version (each source's [B, (L - l) * d] output
    added into slices of out) keeps every source's output, or a copy of the whole gradient per
    source, alive at once: L(L+1)/2 * B * d numbers, 4.4 GB at SmolLM2's L=30, d=576 and 4,096
    tokens. Here one source's block exists at a time, in the forward and in the backward."""

    @staticmethod
    def forward(ctx, a: Tensor, indices: Tensor | None, *ws: Tensor) -> Tensor:
        L, B = a.shape[0], a.shape[1]
        n, d = ws[0].shape[0], ws[0].shape[-1]
        out = torch.zeros(L, B, d, dtype=ws[0].dtype, device=a.device)
        a = a.to(ws[0].dtype)
        for src, w in enumerate(ws):
            wf = w.reshape(n, -1)  # [n, (L - src) * d]
            if indices is None:
                c = a[src] @ wf
            else:
                c = nn.functional.embedding_bag(
                    indices[src], wf, per_sample_weights=a[src], mode="sum"
                )
            out[src:] += c.view(B, L - src, d).transpose(0, 1)
        ctx.save_for_backward(a, indices, *ws)
        ctx.sparse = indices is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, indices, *ws = ctx.saved_tensors
        B = a.shape[1]
        n = ws[0].shape[0]
        need_a = ctx.needs_input_grad[0]
        grad_a = torch.zeros_like(a) if need_a else None
        grad_ws = []
        for src, w in enumerate(ws):
            wf = w.reshape(n, -1)
            g = grad_out[src:].transpose(0, 1).reshape(B, -1).to(w.dtype)  # [B, (L - src) * d]
            if not ctx.sparse:
                if need_a:
                    grad_a[src] = g @ wf.t()
                gw = a[src].t() @ g if ctx.needs_input_grad[2 + src] else None
            else:
                idx = indices[src]
                k = idx.shape[1]
                if need_a:
                    offsets = torch.arange(0, B * k, k, device=idx.device)
                    bag = torch.arange(B, device=idx.device).repeat_interleave(k)
                    grad_a[src] = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                        g.contiguous(), wf, idx.reshape(-1), offsets, bag, 0, -1
                    ).view(B, k)
                gw = _sparse_t_matmul(idx, a[src], g, n) if ctx.needs_input_grad[2 + src] else None
            grad_ws.append(None if gw is None else gw.view_as(w))
        return (grad_a, None, *grad_ws)


def stacked_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """[L, B, n] pre-activations -> (values [L, B, k] ReLU'd, indices [L, B, k]) per layer."""
    v, i = pre.topk(min(k, pre.shape[-1]), dim=-1, sorted=False)
    return v.clamp_min(0), i


def stacked_jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """pre [L, B, n] * H(pre - theta [L, n]) with the straight-through threshold gradient."""
    return _JumpReLU.apply(pre, theta, eps)


def stacked_step(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H(pre - theta) [L, B, n] with the straight-through threshold gradient (the L0 count)."""
    return _Step.apply(pre, theta, eps)


def stacked_sparse_encode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor
) -> Tensor:
    """Attach the sparse encoder gradient to pre-computed top-k `values` [L, B, k] (x [L, B, d],
    W_enc [L, d, n], b_enc [L, n], indices [L, B, k] local latent ids)."""
    return _StackedSparseEncode.apply(x, W_enc, b_enc, values, indices)


def clt_decode(a: Tensor, indices: Tensor | None, W_dec) -> Tensor:
    """[L, B, d] = sum over sources of a dense code a [L, B, n] (indices None) or a sparse one
    (values a, indices [L, B, k]) through the decoders W_dec[l] [n, L - l, d]; no bias."""
    return _CLTDecode.apply(a, indices, *W_dec)


__all__ = [
    "clt_decode",
    "stacked_jumprelu",
    "stacked_sparse_encode",
    "stacked_step",
    "stacked_topk",
]

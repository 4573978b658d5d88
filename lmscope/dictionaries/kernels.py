"""Sparse kernels for TopK dictionaries: touch only the k active latents per token.

A TopK step has one unavoidable dense cost, the encoder matmul x @ W_enc
([batch, d_in] @ [d_in, d_sae]) that ranks every latent. Everything after it is
sparse: each token uses k << d_sae latents (Gao et al. 2024, Sec. 5 / App. D). A
naive implementation pays three more dense matmuls of the same size (decoder
forward, and two in the encoder backward through a mostly-zero [batch, d_sae]
gradient). Here:

- `sparse_decode`: recon[b] = sum_j values[b, j] * W_dec[indices[b, j]] through
  `F.embedding_bag(..., per_sample_weights=values, mode="sum")`, which never builds
  the [batch, k, d_out] gather. Its backward is ours (`_SparseDecode`): grad of the
  values is embedding-bag's per-sample-weights backward; grad of W_dec is a sparse
  [d_sae, batch] @ [batch, d_out] product (COO sparse.mm measured 18 ms vs 31 ms for CSR
  and 134 ms for the dense matmul at batch 4096, d_sae 4608, k 32 on this machine).
- `sparse_encoder_grad`: the forward of the encoder is done by the caller
  (dense matmul + topk, without autograd); this function attaches a gradient to the
  selected values whose backward forms grad W_enc / b_enc / input from the k active
  columns only (sparse @ dense, embedding_bag, index_add), never a dense
  [batch, d_sae] matmul.

- `subset_decode`: AuxK's code (Gao et al. 2024 App. A.2) selects k_aux of the n_dead dead
  latents per token; with d_sae 2,304 and k_aux 288 that is a large share of the subset (half,
  when a quarter of the latents is dead), where the sparse products above run at ~10 GFLOP/s
  against the GEMM's ~90 (fp32) / ~450 (bf16) on one core. So the AuxK code is held as a dense
  [batch, n_dead] matrix over the dead columns only, and its decode and every gradient are
  GEMMs over those columns (trainer's whole-model step: see docs/benchmarks.md).

On CPU, the top-k selection, S^T @ dense and the values' gradient run in native.c (multi-threaded,
built at first use; native.py), each with the torch ops below as the fallback.

tests/test_topk_fast.py checks all three against dense autograd references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native


def _sparse_t_matmul(indices: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """S^T @ dense where S [batch, n_rows] is sparse with S[b, indices[b, j]] = weights[b, j].

    indices, weights [batch, k]; dense [batch, d] -> [n_rows, d]. Duplicate (b, j) entries add.
    """
    got = native.sparse_t_matmul(indices, weights, dense, n_rows)
    if got is not None:
        return got
    batch, k = indices.shape
    rows = indices.reshape(-1)  # [batch*k] latent id
    cols = torch.arange(batch, device=indices.device).repeat_interleave(k)  # [batch*k] token id
    st = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), weights.reshape(-1), (n_rows, batch), check_invariants=False
    )
    return torch.sparse.mm(st, dense)  # [n_rows, d]


class _SparseEncoderGrad(torch.autograd.Function):
    """values = (x_in @ W_enc + b_enc)[b, indices[b, j]], with gradients only through those
    entries."""

    @staticmethod
    def forward(
        ctx, x_in: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor
    ) -> Tensor:
        # `values` were computed by the caller (dense matmul + topk, no autograd) and are
        # returned as is; ReLU'd zeros get no gradient (the mask below).
        ctx.save_for_backward(x_in, W_enc, indices, values > 0)
        ctx.b_enc_shape = b_enc.shape
        return values

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x_in, W_enc, indices, active = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        g = (grad_values * active).to(W_enc.dtype)  # [batch, k]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            # grad_x[b] = sum_j g[b, j] * W_enc[:, indices[b, j]]
            if d_sae > indices.numel():
                # Huge dictionaries (1M+ latents): gather only the active columns instead of a
                # full transposed copy of W_enc (2.4 GB at 1M x 576), a chunk of tokens at a time.
                W_t = W_enc.t()  # [d_sae, d_in] view, no copy
                grad_x = torch.empty(x_in.shape, dtype=W_enc.dtype, device=W_enc.device)
                for s in range(0, indices.shape[0], 512):
                    rows = W_t[indices[s : s + 512]]  # [chunk, k, d_in]
                    torch.bmm(g[s : s + 512, None, :], rows, out=grad_x[s : s + 512, None, :])
                grad_x = grad_x.to(x_in.dtype)
            else:
                W_t = W_enc.t().contiguous()  # [d_sae, d_in]
                grad_x = F.embedding_bag(indices, W_t, per_sample_weights=g, mode="sum").to(
                    x_in.dtype
                )
        if ctx.needs_input_grad[1]:
            # grad W_enc[:, c] = sum over (b, j) with indices[b, j] == c of g[b, j] * x_in[b]
            grad_W = _sparse_t_matmul(indices, g, x_in.to(W_enc.dtype), d_sae).t()  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(ctx.b_enc_shape, dtype=W_enc.dtype, device=W_enc.device)
            grad_b.index_add_(0, indices.reshape(-1), g.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


def sparse_encoder_grad(
    x_in: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor
) -> Tensor:
    """Attach the sparse encoder gradient to pre-computed top-k `values` [batch, k].

    x_in [batch, d_in] is the encoder input (after b_dec subtraction, with its own
    autograd history); W_enc [d_in, d_sae]; b_enc [d_sae]; indices [batch, k].
    """
    return _SparseEncoderGrad.apply(x_in, W_enc, b_enc, values, indices)


class _SparseDecode(torch.autograd.Function):
    """recon[b] = sum_j values[b, j] * W_dec[indices[b, j]] (no bias)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        values = values.to(W_dec.dtype)
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(
            indices, W_dec, per_sample_weights=values, mode="sum"
        )  # [batch, d_out]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # grad_values[b, j] = <grad_out[b], W_dec[indices[b, j]]>: the native kernel, else
            # PyTorch's own embedding-bag per-sample-weights backward (no [batch, k, d_out]
            # gather; ~10x faster here than gather + bmm, but one thread).
            grad_values = native.rowdot(indices, grad_out, W_dec)
        if ctx.needs_input_grad[0] and grad_values is None:
            batch, k = indices.shape
            offsets = torch.arange(0, batch * k, k, device=indices.device)
            offset2bag = torch.arange(batch, device=indices.device).repeat_interleave(k)
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out.contiguous(), W_dec, indices.reshape(-1), offsets, offset2bag, 0, -1
            ).view(batch, k)
        if ctx.needs_input_grad[2]:
            grad_W = _sparse_t_matmul(indices, values, grad_out, W_dec.shape[0])  # [d_sae, d_out]
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """[batch, k] values and indices, W_dec [d_sae, d_out] -> [batch, d_out] (bias not added)."""
    return _SparseDecode.apply(values, indices, W_dec)


class _SubsetDecode(torch.autograd.Function):
    """e_hat = codes @ W_dec[cols] with codes [batch, n] = ReLU'd pre-activations of the columns
    `cols` [n] of W_enc where selected, else 0; gradients into x_in, W_enc[:, cols], b_enc[cols]
    and W_dec[cols] through the selected positive entries only, as dense GEMMs over the subset."""

    @staticmethod
    def forward(ctx, x_in, W_enc, b_enc, W_dec, codes, cols):
        # Under autocast the GEMMs run in its dtype, as the encoder's own matmul does.
        dev = x_in.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else W_dec.dtype
        W_d = W_dec.index_select(0, cols).to(dt)  # [n, d_out]
        codes = codes.to(dt)
        ctx.save_for_backward(x_in, W_enc, codes, cols, W_d)
        ctx.dt = dt
        ctx.b_shape = b_enc.shape
        ctx.dec_shape = W_dec.shape
        return codes @ W_d  # [batch, d_out]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x_in, W_enc, codes, cols, W_d = ctx.saved_tensors
        dt = ctx.dt
        g = grad_out.to(dt)  # [batch, d_out]
        grad_x = grad_W = grad_b = grad_dec = None
        if ctx.needs_input_grad[3]:
            grad_dec = W_enc.new_zeros(ctx.dec_shape)  # [d_sae, d_out]
            grad_dec.index_copy_(0, cols, (codes.t() @ g).to(grad_dec.dtype))
        # d e_hat / d codes, kept where a latent was selected and positive (TopK then ReLU)
        gc = (g @ W_d.t()).mul_(codes > 0)  # [batch, n]
        if ctx.needs_input_grad[0]:
            W_e = W_enc.index_select(1, cols).to(dt)  # [d_in, n]
            grad_x = (gc @ W_e.t()).to(x_in.dtype)  # [batch, d_in]
        if ctx.needs_input_grad[1]:
            grad_W = torch.zeros_like(W_enc)  # [d_in, d_sae]
            grad_W.index_copy_(1, cols, (x_in.to(dt).t() @ gc).to(W_enc.dtype))
        if ctx.needs_input_grad[2]:
            grad_b = W_enc.new_zeros(ctx.b_shape)
            grad_b.index_copy_(0, cols, gc.sum(0, dtype=torch.float32).to(W_enc.dtype))
        return grad_x, grad_W, grad_b, grad_dec, None, None


def subset_decode(
    x_in: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, codes: Tensor, cols: Tensor
) -> Tensor:
    """Decode a dense code over a subset of latents, with the encoder's gradient attached.

    x_in [batch, d_in] is the encoder input (with its autograd history); W_enc [d_in, d_sae],
    b_enc [d_sae], W_dec [d_sae, d_out]; cols [n] latent ids; codes [batch, n] the (no-grad)
    activations of those latents: ReLU'd pre-activations where selected, 0 elsewhere.
    Returns codes @ W_dec[cols] [batch, d_out] (no bias), differentiable as if codes were
    (x_in @ W_enc + b_enc)[:, cols] masked to the positive selected entries.
    """
    return _SubsetDecode.apply(x_in, W_enc, b_enc, W_dec, codes, cols)


__all__ = ["sparse_decode", "sparse_encoder_grad", "subset_decode"]

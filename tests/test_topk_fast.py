"""The sparse TopK training path equals a dense autograd reference: same loss, same gradients.

The reference below is the textbook formulation (Gao et al. 2024): dense pre-activations,
top-k, scatter into a dense [batch, d_sae] code, dense decoder matmul, AuxK on the dead
latents, all differentiated by plain autograd. The fast path (kernels.py) never builds the
dense code or its gradient; both must agree to fp32 tolerance for every parameter.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.dictionaries import DictionaryConfig, build
from lmscope.dictionaries.batchtopk import batch_topk_codes
from lmscope.dictionaries.kernels import sparse_decode, sparse_encoder_grad


def _dense_reference(d, x, target, dead_mask, *, batch_topk=False):
    """Loss of dictionary `d` computed densely; returns (loss, mse, aux)."""
    cfg = d.cfg
    x_n = x * d.act_scale
    t_n = (x if target is None else target) * d.act_scale_out
    x_in = x_n - d.b_dec if d.apply_b_dec_to_input else x_n
    pre = x_in @ d.W_enc + d.b_enc  # [batch, d_sae]
    if batch_topk:
        flat = pre.relu().reshape(-1)
        vals, idx = flat.topk(cfg.k * x.shape[0])
        acts = torch.zeros_like(flat).scatter(0, idx, vals).reshape(pre.shape)
    else:
        vals, idx = pre.topk(cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())  # [batch, d_sae]
    recon = acts @ d.W_dec + d.b_dec
    if d.W_skip is not None:
        recon = recon + x_n @ d.W_skip.t()
    mse = (recon - t_n).pow(2).sum() / x.shape[0]
    aux = torch.zeros(())
    if dead_mask is not None and dead_mask.any():
        k_aux = min(cfg.resolved_aux_k, int(dead_mask.sum()))
        masked = pre.masked_fill(~dead_mask, float("-inf"))
        av, ai = masked.topk(k_aux, dim=-1)
        aux_acts = torch.zeros_like(pre).scatter(-1, ai, av.relu())
        e = (t_n - recon).detach()
        aux = (aux_acts @ d.W_dec - e).pow(2).sum(-1).mean()
    return mse + cfg.aux_coeff * aux, mse, aux


def _grads(d, loss):
    d.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}


CASES = [
    dict(arch="topk"),
    dict(arch="topk", d_out=24, skip=True, out_hook_name="blocks.0.mlp_out"),
    dict(arch="topk", d_out=24, skip=False, out_hook_name="blocks.0.mlp_out"),
    dict(arch="batchtopk"),
    dict(arch="batchtopk", d_out=24, skip=True, out_hook_name="blocks.0.mlp_out"),
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "out_hook_name")
)
@pytest.mark.parametrize(
    "with_dead,aux_ratio,bucket",
    [(False, None, None), (True, 4, 1), (True, 4, 64), (True, 4, 256), (True, 0, None)],
    ids=["no-dead", "auxk-dense", "auxk-dense-pad64", "auxk-dense-pad256", "auxk-sparse"],
)
def test_fast_path_equals_dense_reference(case, with_dead, aux_ratio, bucket, monkeypatch):
    # AuxK runs through dense GEMMs over the dead columns (40% of 256 dead, k_aux 16: within
    # topk.DENSE_AUX_RATIO = 4), padded with live columns to a multiple of `bucket` (whose codes
    # stay 0), or, with ratio 0, through the sparse kernels: all must match.
    if aux_ratio is not None:
        monkeypatch.setattr("lmscope.dictionaries.topk.DENSE_AUX_RATIO", aux_ratio)
    if bucket is not None:
        monkeypatch.setattr("lmscope.dictionaries.topk.AUX_BUCKET", bucket)
    torch.manual_seed(0)
    cfg = DictionaryConfig(d_in=32, d_sae=256, k=8, aux_k=16, hook_name="blocks.0.mlp_in", **case)
    d = build(cfg)
    x = torch.randn(64, 32) * 5 + 1
    target = torch.randn(64, cfg.output_dim) * 2 if cfg.is_transcoder else None
    d.init_from_data(x, target)
    with torch.no_grad():  # make every parameter non-trivial
        d.b_enc.normal_(0, 0.1)
        if d.W_skip is not None:
            d.W_skip.normal_(0, 0.05)
    dead = torch.rand(256, generator=torch.Generator().manual_seed(1)) < 0.4 if with_dead else None

    out = d.loss(x, target, dead_mask=dead)
    fast = _grads(d, out.loss)
    ref_loss, ref_mse, ref_aux = _dense_reference(
        d, x, target, dead, batch_topk=cfg.arch == "batchtopk"
    )
    ref = _grads(d, ref_loss)

    torch.testing.assert_close(out.loss, ref_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mse, ref_mse.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux_loss, ref_aux.detach(), rtol=1e-5, atol=1e-5)
    if with_dead:
        assert out.aux_loss > 0
    assert set(fast) == set(ref) and "W_enc" in fast and "W_dec" in fast and "b_dec" in fast
    for name in ref:
        scale = ref[name].abs().max().item()
        torch.testing.assert_close(
            fast[name],
            ref[name],
            rtol=1e-4,
            atol=1e-5 * max(1.0, scale),
            msg=lambda m, n=name: f"gradient of {n}: {m}",
        )


def test_dense_auxk_under_bf16_autocast_matches_sparse(monkeypatch):
    # Under autocast the dense AuxK's GEMMs run in bf16 (as the encoder's does); the sparse
    # kernels run in the weights' fp32. Same selection, so equal to bf16 rounding.
    torch.manual_seed(0)
    cfg = DictionaryConfig(
        d_in=32, d_sae=256, k=8, aux_k=16, aux_coeff=1.0, hook_name="blocks.0.mlp_in"
    )  # AuxK weighted 1: its gradient is not drowned by the main term's
    d = build(cfg)
    x = torch.randn(64, 32) * 5 + 1
    d.init_from_data(x)
    dead = torch.rand(256, generator=torch.Generator().manual_seed(1)) < 0.4
    out = {}
    for name, ratio in (("dense", 4), ("sparse", 0)):
        monkeypatch.setattr("lmscope.dictionaries.topk.DENSE_AUX_RATIO", ratio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o = d.loss(x, dead_mask=dead)
        out[name] = (o.aux_loss, _grads(d, o.loss))
    torch.testing.assert_close(out["dense"][0], out["sparse"][0], rtol=2e-2, atol=1e-3)
    for n, g in out["sparse"][1].items():
        scale = g.abs().max().item()
        torch.testing.assert_close(out["dense"][1][n], g, rtol=5e-2, atol=2e-2 * scale)


def test_kernels_directly_against_autograd():
    """The two autograd Functions alone, with duplicate latents across tokens and zero values."""
    torch.manual_seed(0)
    batch, d_in, d_sae, k = 16, 8, 40, 5
    x = torch.randn(batch, d_in, requires_grad=True)
    W_enc = torch.randn(d_in, d_sae, requires_grad=True)
    b_enc = torch.randn(d_sae, requires_grad=True)
    W_dec = torch.randn(d_sae, 12, requires_grad=True)
    pre = x @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    g_out = torch.randn(batch, 12)

    ref = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ W_dec
    ref_grads = torch.autograd.grad((ref * g_out).sum(), [x, W_enc, b_enc, W_dec])

    v = sparse_encoder_grad(x, W_enc, b_enc, vals.detach().relu(), idx)
    fast = sparse_decode(v, idx, W_dec)
    fast_grads = torch.autograd.grad((fast * g_out).sum(), [x, W_enc, b_enc, W_dec])
    torch.testing.assert_close(fast, ref)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_batch_topk_codes_keep_k_times_batch():
    pre = torch.randn(32, 100)
    codes = batch_topk_codes(pre, 4)
    assert int((codes.values > 0).sum()) == min(128, int((pre > 0).sum()))
    dense = torch.zeros_like(pre).scatter_add(-1, codes.indices, codes.values)
    kth = pre.relu().reshape(-1).topk(128).values[-1]
    assert torch.equal(dense > 0, pre >= kth)

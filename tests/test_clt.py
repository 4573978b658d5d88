"""The CrossLayerTranscoder class: decode writes only forward in depth, raw units survive
save/load, and the sparse training path equals plain dense autograd."""

from __future__ import annotations

import pytest
import torch

from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder


def _tiny(arch="topk", L=3, d=4, n=5, k=2, seed=0):
    return CrossLayerTranscoder(
        CLTConfig(n_layers=L, d_model=d, d_sae=n, arch=arch, k=k, seed=seed)
    )


def test_decode_sums_only_earlier_sources_by_hand():
    clt = _tiny(L=3, d=2, n=2)
    with torch.no_grad():
        clt.b_dec.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5], [1.0, 1.0]]))
        # W_dec[l][i, j] = the vector latent i of layer l writes into layer l + j
        clt.W_dec[0].copy_(torch.tensor([[[1.0, 0], [2, 0], [3, 0]], [[0, 1.0], [0, 2], [0, 3]]]))
        clt.W_dec[1].copy_(torch.tensor([[[10.0, 0], [20, 0]], [[0, 10.0], [0, 20]]]))
        clt.W_dec[2].copy_(torch.tensor([[[100.0, 0]], [[0, 100.0]]]))
    acts = torch.zeros(3, 1, 2)
    acts[0, 0, 0] = 1.0  # layer-0 latent 0
    acts[1, 0, 1] = 2.0  # layer-1 latent 1
    acts[2, 0, 0] = 3.0  # layer-2 latent 0
    out = clt.decode(acts)[:, 0]
    # target 0: only source 0 -> 1 * [1, 0] + b_dec[0]
    # target 1: source 0 (j=1) 1 * [2, 0] + source 1 (j=0) 2 * [0, 10] + b_dec[1]
    # target 2: 1 * [3, 0] + 2 * [0, 20] + 3 * [100, 0] + b_dec[2]
    want = torch.tensor([[1.5, 0.0], [2.0, 20.5], [304.0, 41.0]])
    torch.testing.assert_close(out, want)
    assert clt.decoder_to(1, 2).tolist() == [[20.0, 0.0], [0.0, 20.0]]
    with pytest.raises(ValueError):
        clt.decoder_to(2, 1)  # no decoder writes backwards in depth


def test_later_source_never_changes_earlier_target():
    clt = _tiny(L=4, d=3, n=6, k=3)
    acts = torch.rand(4, 5, 6)
    base = clt.decode(acts)
    acts2 = acts.clone()
    acts2[2] += 1.0
    out2 = clt.decode(acts2)
    torch.testing.assert_close(out2[:2], base[:2])  # targets 0, 1 read sources <= 1 only
    assert (out2[2:] - base[2:]).abs().max() > 1e-3


def test_topk_encode_keeps_k_per_layer():
    clt = _tiny(L=3, d=4, n=8, k=3)
    with torch.no_grad():
        clt.W_enc.mul_(50)
    acts = clt.encode(torch.randn(3, 7, 4))
    assert acts.shape == (3, 7, 8)
    assert ((acts > 0).sum(-1) <= 3).all() and ((acts > 0).sum(-1) >= 1).any()


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_save_load_folds_scales_into_raw_units(tmp_path, arch):
    L, d, n = 3, 4, 6
    clt = _tiny(arch, L=L, d=d, n=n, k=2, seed=1)
    x = torch.randn(L, 64, d) * torch.tensor([1.0, 30.0, 0.01])[:, None, None]
    t = torch.randn(L, 64, d) * torch.tensor([5.0, 0.1, 200.0])[:, None, None]
    clt.init_from_data(x, t)
    with torch.no_grad():
        clt.W_enc.mul_(20)
        clt.b_enc.add_(0.01)
    assert not torch.allclose(clt.act_scale_out, torch.ones(L))
    before = clt(x)
    acts_before = clt.encode(x)
    dec_before = clt.decoder_to(0, 2)
    clt.save(tmp_path / "c")
    back = CrossLayerTranscoder.load(tmp_path / "c")
    assert back.cfg == clt.cfg
    torch.testing.assert_close(back.act_scale_out, torch.ones(L))  # raw-unit parameters
    torch.testing.assert_close(back(x), before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(back.encode(x), acts_before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(back.decoder_to(0, 2), dec_before)
    # raw decode is acts @ decoder_to + b_dec by definition
    manual = back.b_dec[2] + sum(acts_before[s] @ back.decoder_to(s, 2) for s in range(3))
    torch.testing.assert_close(back(x)[2], manual, rtol=1e-4, atol=1e-4)


def _dense_reference_loss(clt: CrossLayerTranscoder, x, t):
    """The topk loss written naively: dense acts, autograd everywhere (no AuxK)."""
    x_n = x * clt.act_scale_in[:, None, None]
    t_n = t * clt.act_scale_out[:, None, None]
    pre = torch.baddbmm(clt.b_enc[:, None, :], x_n, clt.W_enc)
    v, i = pre.detach().topk(clt.cfg.k, dim=-1)
    mask = torch.zeros_like(pre).scatter_(-1, i, 1.0)
    acts = (pre * mask).clamp_min(0)
    L = clt.n_layers
    out = []
    for tt in range(L):
        o = clt.b_dec[tt]
        for s in range(tt + 1):
            o = o + acts[s] @ clt.W_dec[s][:, tt - s]
        out.append(o)
    recon = torch.stack(out)
    return (recon - t_n).pow(2).sum() / x.shape[1]


def test_sparse_topk_loss_and_grads_equal_dense_autograd():
    clt = _tiny("topk", L=3, d=4, n=7, k=2, seed=3)
    x, t = torch.randn(3, 9, 4), torch.randn(3, 9, 4)
    clt.init_from_data(x, t)
    with torch.no_grad():
        clt.W_enc.mul_(10)
    out = clt.loss(x, t)
    out.loss.backward()
    got = [p.grad.clone() for p in clt.parameters()]
    clt.zero_grad()
    ref = _dense_reference_loss(clt, x, t)
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    for g, p in zip(got, clt.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    assert out.fvu.shape == (3,) and out.l0.shape == (3,) and out.fired.shape == (3, 7)


def test_jumprelu_loss_trains_threshold_and_counts_l0():
    clt = _tiny("jumprelu", L=2, d=4, n=6, seed=4)
    x, t = torch.randn(2, 32, 4), torch.randn(2, 32, 4)
    clt.init_from_data(x, t)
    with torch.no_grad():
        clt.W_enc.mul_(30)
    out = clt.loss(x, t)
    out.loss.backward()
    assert clt.threshold.grad is not None and clt.threshold.grad.abs().sum() > 0
    acts = clt.encode(x)
    torch.testing.assert_close(out.l0, (acts > 0).sum(-1).float().mean(1))
    torch.testing.assert_close(out.sparsity_loss, clt.cfg.l0_coeff * out.l0.sum())


def test_remove_parallel_grad_keeps_decoders_tangent():
    clt = _tiny("topk", L=3, d=4, n=5, k=2)
    x, t = torch.randn(3, 16, 4), torch.randn(3, 16, 4)
    clt.loss(x, t).loss.backward()
    clt.remove_parallel_grad_()
    for w in clt.W_dec:
        dots = (w.grad.flatten(1) * w.detach().flatten(1)).sum(1)
        torch.testing.assert_close(dots, torch.zeros_like(dots), atol=1e-6, rtol=0)
        torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(5))


def test_decoder_param_count_formula():
    cfg = CLTConfig(n_layers=30, d_model=576, d_sae=2304)
    assert cfg.n_decoder_params == 617_103_360 == 30 * 31 // 2 * 2304 * 576
    clt_cfg = CLTConfig(n_layers=4, d_model=3, d_sae=5, arch="jumprelu")
    clt = CrossLayerTranscoder(clt_cfg)
    assert sum(p.numel() for p in clt.parameters()) == clt_cfg.n_params


def test_load_rejects_non_clt_folder(tmp_path):
    from lmscope.errors import UserError

    with pytest.raises(UserError, match="not an lmscope CLT folder"):
        CrossLayerTranscoder.load(tmp_path)


def _fit(model, x, t, steps=150, lr=2e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    # 8-wide matmuls gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    # barrier waits made each step ~20x slower than single-threaded.
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            opt.zero_grad()
            model.loss(x, t).loss.backward()
            model.remove_parallel_grad_()
            opt.step()
            model.constrain_() if hasattr(model, "constrain_") else model.normalize_decoder_()
    finally:
        torch.set_num_threads(threads)


def test_planted_cross_layer_write_is_recovered_and_per_layer_cannot():
    """Layer 0's input carries 6 sparse features whose ONLY effect is on layer 1's MLP output;
    layer 1's input is unrelated noise. A CLT (16 latents per layer, k=2) learns layer-0
    latents whose decoder into layer 1 is each planted direction; a per-layer transcoder of the
    same width and k at layer 1 reads noise and cannot do better than the mean."""
    from lmscope.dictionaries import DictionaryConfig, build

    torch.manual_seed(0)
    d, n_feat, B = 8, 6, 1024
    enc_dirs = torch.linalg.qr(torch.randn(d, d))[0][:, :n_feat].t()  # [6, d] orthonormal
    dec_dirs = torch.nn.functional.normalize(torch.randn(n_feat, d), dim=1)
    codes = torch.rand(B, n_feat) * 2 * (torch.rand(B, n_feat) < 0.15)
    x = torch.stack([codes @ enc_dirs, torch.randn(B, d)])  # layer 1 input: noise
    t = torch.stack([0.01 * torch.randn(B, d), codes @ dec_dirs + 0.01 * torch.randn(B, d)])
    clt = CrossLayerTranscoder(CLTConfig(n_layers=2, d_model=d, d_sae=16, k=2, seed=1))
    clt.init_from_data(x, t)
    _fit(clt, x, t)
    fvu = clt.loss(x, t).fvu
    assert fvu[1] < 0.2, fvu
    dec01 = torch.nn.functional.normalize(clt.decoder_to(0, 1).detach(), dim=1)  # [16, d]
    best = (dec01 @ dec_dirs.t()).max(0).values  # per planted feature
    assert (best > 0.9).all(), best
    per_layer = build(
        DictionaryConfig(
            d_in=d,
            d_sae=16,
            k=2,
            d_out=d,
            hook_name="blocks.1.mlp_in",
            out_hook_name="blocks.1.mlp_out",
            seed=1,
        )
    )
    per_layer.init_from_data(x[1], t[1])
    _fit(per_layer, x[1], t[1])
    assert per_layer.loss(x[1], t[1]).fvu > 0.8


def test_one_layer_clt_equals_a_per_layer_transcoder_including_auxk():
    """With L = 1 a CLT is a TopK transcoder: same weights -> the same MSE, FVU and AuxK
    (computed by topk.py's own code), with some latents dead."""
    from lmscope.dictionaries import DictionaryConfig, build

    d, n, k = 6, 10, 2
    clt = CrossLayerTranscoder(CLTConfig(n_layers=1, d_model=d, d_sae=n, k=k, aux_k=3, seed=5))
    tc = build(
        DictionaryConfig(
            d_in=d, d_sae=n, k=k, d_out=d, hook_name="a", out_hook_name="b", aux_k=3, seed=5
        )
    )
    x, t = torch.randn(1, 40, d), torch.randn(1, 40, d) + 0.5
    clt.init_from_data(x, t)
    tc.init_from_data(x[0], t[0])
    with torch.no_grad():
        clt.W_enc.mul_(5)
        tc.W_enc.copy_(clt.W_enc[0])
        tc.b_enc.copy_(clt.b_enc[0])
        tc.W_dec.copy_(clt.W_dec[0][:, 0])
        tc.b_dec.copy_(clt.b_dec[0])
        tc.act_scale.copy_(clt.act_scale_in[0])
        tc.act_scale_out.copy_(clt.act_scale_out[0])
    dead = torch.zeros(n, dtype=torch.bool)
    dead[::2] = True
    a = clt.loss(x, t, dead_mask=dead[None])
    b = tc.loss(x[0], t[0], dead_mask=dead)
    assert float(b.aux_loss) > 0
    torch.testing.assert_close(a.mse, b.mse)
    torch.testing.assert_close(a.fvu[0], b.fvu)
    torch.testing.assert_close(a.aux_loss, b.aux_loss)
    torch.testing.assert_close(a.loss, b.loss)

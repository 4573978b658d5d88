"""Held-out documents never appear in training, and eval refuses a dictionary that saw them.

A real tiny model (saved to a folder and loaded like any model) on real corpus-like files (a
.txt of paragraphs and a .jsonl). The held-out documents are worked out here from the files
themselves (paragraphs, blake2b of the text, the 5% rule), not with lmscope's reader.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch

from lmscope.cli import main


def key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sentences(r: random.Random, n: int) -> str:
    animals, verbs = (
        "cat dog horse bird fish cow sheep".split(),
        "sees saw eats ate love hate".split(),
    )
    nouns = "house tree river field city moon".split()
    return " ".join(
        f"the {r.choice(animals)} {r.choice(verbs)} the {r.choice(nouns)} {i} ." for i in range(n)
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A tiny model folder, a corpus folder (.txt + .jsonl) and the documents of each split."""
    from lmscope.models import load_model

    d = tmp_path_factory.mktemp("docs")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=2))
    r = random.Random(0)
    paras = [f"doc {i}: " + sentences(r, r.randint(2, 6)) for i in range(400)]
    rows = [f"row {i}: " + sentences(r, r.randint(2, 6)) for i in range(200)]
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_text("\n\n".join(paras) + "\n")
    (d / "corpus" / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    docs = paras + rows
    held = {key(t) for t in docs if key(t) % 1_000_000 < 0.05 * 1_000_000}
    assert 10 < len(held) < 60  # ~5% of 600
    return d, load_model(str(d / "model")), {key(t) for t in docs}, held


def train_atlas(d, lm, name: str, **kw):
    from lmscope.dictionaries.train_config import TrainConfig
    from lmscope.dictionaries.trainer import train

    out = d / name
    train(
        TrainConfig(
            model=str(d / "model"),
            hooks="blocks.1.resid_post",
            width="2x",
            k=4,
            tokens=2048,
            batch_size=256,
            ctx_len=32,
            corpus=str(d / "corpus"),
            out=str(out),
            progress=False,
            **kw,
        ),
        lm=lm,
    )
    entry = json.loads((out / "atlas.json").read_text())["dictionaries"]["blocks.1.resid_post"]
    keys = np.load(out / entry["path"] / entry["train_data"]["file"])
    return out, entry, {int(k) for k in keys}


def capture(d, lm, name: str, split: str):
    from lmscope.capture.pipeline import CaptureConfig, capture_to_store

    out = d / name
    capture_to_store(
        CaptureConfig(
            model=str(d / "model"),
            hooks="blocks.1.resid_post",
            corpus=str(d / "corpus"),
            tokens=4096,
            ctx_len=32,
            out=str(out),
            split=split,
            progress=False,
        ),
        lm=lm,
    )
    return out


def test_pack_records_exactly_the_documents_of_the_contexts_read(world):
    from lmscope.capture.corpus import pack

    _, lm, _, _ = world
    docs = [
        "the cat sees the moon .",
        "a b c d e f g h i j k l",
        "the dog",
        "one two three four five six",
    ]
    lens = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in docs]  # + EOS
    ends = np.cumsum(lens)  # document i spans [ends[i] - lens[i], ends[i]) of the token stream
    body = 7  # ctx_len 8 = BOS + 7
    seen: set[int] = set()
    it = pack(
        lm.tokenizer,
        docs,
        ctx_len=8,
        batch_size=1,
        bos_token_id=lm.bos_token_id,
        seed=-1,
        seen=seen,
    )
    for n_ctx in (1, 2):
        next(it)
        want = {key(t) for t, e, n in zip(docs, ends, lens) if e - n < n_ctx * body}
        assert seen == want, n_ctx


def test_heldout_documents_never_appear_in_training(world, tmp_path):
    """Streamed and from a store: the recorded training documents are training-split documents
    (none held out), and eval's own documents are all held out and disjoint from them."""
    from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas

    d, lm, all_docs, held = world
    out, entry, keys = train_atlas(d, lm, "stream")
    assert entry["train_data"]["source"] == "stream" and entry["train_data"]["split"] == "train"
    assert entry["train_data"]["documents"] == len(keys) > 50
    assert keys <= all_docs - held

    store = capture(d, lm, "store_train", "train")
    store_keys = {int(k) for k in np.load(store / "documents.npy")}
    assert store_keys <= all_docs - held and len(store_keys) > 50
    out2, entry2, keys2 = train_atlas(d, lm, "from_store", from_store=str(store))
    assert keys2 == store_keys and entry2["train_data"]["source"].startswith("store")

    seen: set[int] = set()
    from lmscope.dictionaries.evaluate import heldout_contexts

    heldout_contexts(lm, str(d / "corpus"), tokens=400, ctx_len=32, seen=seen)
    assert seen and seen <= held
    for atlas in (out, out2):
        rep = evaluate_atlas(
            EvalConfig(
                atlas=str(atlas), tokens=400, corpus=str(d / "corpus"), ctx_len=32, plots=False
            ),
            lm=lm,
            progress=False,
        )
        (e,) = rep.dictionaries
        assert e.overlap_documents == 0 and e.eval_documents == len(seen)


def test_eval_refuses_a_dictionary_trained_on_its_documents(world, capsys):
    """A store captured with --split all holds the held-out documents: eval says so and exits 2."""
    d, lm, _, held = world
    store = capture(d, lm, "store_all", "all")
    assert held & {int(k) for k in np.load(store / "documents.npy")}
    out, _, _ = train_atlas(d, lm, "leaky", from_store=str(store))
    argv = [
        "eval",
        str(out),
        "--tokens",
        "400",
        "--corpus",
        str(d / "corpus"),
        "--ctx-len",
        "32",
        "--no-plots",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "were in the training data of blocks.1.resid_post" in err
    assert "--split train" in err and "Traceback" not in err
    assert main(argv + ["--allow-overlap"]) == 0
    assert "WARNING" in capsys.readouterr().err
    (e,) = json.loads((out / "eval.json").read_text())["dictionaries"]
    assert e["overlap_documents"] > 0


def test_a_tensor_source_records_no_documents(world, tmp_path):
    """Training from in-memory tensors cannot say which documents it saw: the manifest says so
    (null) and eval reports the check as not done rather than passed."""
    from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas
    from lmscope.dictionaries.sources import TensorSource
    from lmscope.dictionaries.train_config import TrainConfig
    from lmscope.dictionaries.trainer import train

    d, lm, _, _ = world
    src = TensorSource({"blocks.1.resid_post": torch.randn(1024, lm.d_model)}, batch_size=256)
    out = tmp_path / "t"
    train(
        TrainConfig(
            model=str(d / "model"),
            hooks="blocks.1.resid_post",
            width="2x",
            k=4,
            tokens=1024,
            batch_size=256,
            out=str(out),
            progress=False,
        ),
        lm=lm,
        source=src,
    )
    entry = json.loads((out / "atlas.json").read_text())["dictionaries"]["blocks.1.resid_post"]
    assert entry["train_data"] is None
    rep = evaluate_atlas(
        EvalConfig(atlas=str(out), tokens=200, corpus=str(d / "corpus"), ctx_len=32, plots=False),
        lm=lm,
        progress=False,
    )
    assert rep.dictionaries[0].overlap_documents is None

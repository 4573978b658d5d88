"""The fast explain paths (issue 21 item 10) against their slow references, on small random cases:
the scores must be the same numbers, not merely close in aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from lmscope.atlas.db import Example
from lmscope.explain.scorers import auroc, balanced_accuracy
from lmscope.explain.scorers.direct import score_direct, trials, trials_reference
from lmscope.explain.split import Held, token_key
from lmscope.explain.token_embeddings import TokenEmbeddings

WORDS = [" the", " cat", ",", " sat", "Ġon", "cat", " mat", "."]


def _auroc_loop(scores, truth):
    """The rank-sum AUROC with the tie loop of the original implementation."""
    s, t = np.asarray(scores, float), np.asarray(truth, bool)
    allv = np.concatenate([s[t], s[~t]])
    order = np.argsort(allv, kind="mergesort")
    v = allv[order]
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[j + 1] == v[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(v))
    r[order] = ranks
    n_pos = int(t.sum())
    return (r[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(v) - n_pos))


def test_auroc_ties_by_hand_and_against_the_loop():
    # pos (1, 1), neg (1, 0): pairs 1>0 twice (wins), 1=1 twice (half) -> (2 + 1) / 4
    assert auroc([1, 1, 1, 0], [True, True, False, False]) == 0.75
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 4, n).astype(float)  # many ties
        t = rng.random(n) < 0.4
        t[0], t[1] = True, False
        assert auroc(s.tolist(), t.tolist()) == _auroc_loop(s, t)


def _held(rng, n_win=6):
    def win(fire):
        toks = [WORDS[i] for i in rng.integers(0, len(WORDS), 8)]
        acts = [float(a) if fire else 0.0 for a in rng.integers(0, 3, 8)]
        return Example("top" if fire else "negative", toks, acts, 0, max(acts), None, [], 0)

    return Held([win(True) for _ in range(n_win)], [win(False) for _ in range(n_win)])


def test_direct_scorer_counts_equal_the_token_by_token_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        held = _held(rng)
        keys, truth = trials_reference(held)
        tr = trials(held)
        for label in ([" cat"], [",", "."], ["Ġthe", "mat"], ["dog"]):
            words = {token_key(k) for k in label}
            got = score_direct(", ".join(label), held, label, tr)
            ref = balanced_accuracy([k in words for k in keys], truth)
            assert got.value == ref
            assert (got.n_pos, got.n_neg) == (sum(truth), len(truth) - sum(truth))
    # by hand: 2 of the 3 " cat" fire, nothing else does; label "cat" -> tpr 2/2, tnr 2/3
    held = Held(
        [Example("top", [" cat", " cat", " sat"], [1.0, 2.0, 0.0], 0, 2.0, None, [], 0)],
        [Example("negative", [" cat", " the"], [0.0, 0.0], 0, 0.0, None, [], 0)],
    )
    assert score_direct("cat", held, ["cat"]).value == pytest.approx((1 + 2 / 3) / 2)


def _windows_reference(te, spans):
    """The original windows(): per window, its tokens' float16 rows converted and summed."""
    out = []
    for a, b in spans:
        r = te.rows(np.arange(a, b))
        w = np.where(r >= 0, te.counts[np.maximum(r, 0)], 0).astype(np.float32)
        v = (te.vecs[np.maximum(r, 0)].astype(np.float32) * w[:, None]).sum(0)
        n = np.linalg.norm(v)
        out.append(v / n if n > 0 else v)
    return np.stack(out)


def test_window_vectors_equal_the_per_window_reference():
    rng = np.random.default_rng(2)
    ids = np.sort(rng.choice(5000, 3000, replace=False))  # gaps: ids never embedded weigh 0
    vecs = rng.normal(size=(len(ids), 16)).astype(np.float16)
    counts = rng.integers(0, 4, len(ids)).astype(np.int16)
    te = TokenEmbeddings(ids, vecs, counts)
    starts = rng.integers(0, 4990, 500)
    spans = [(int(a), int(a) + int(rng.integers(1, 17))) for a in starts]
    got, ref = te.windows(spans), _windows_reference(te, spans)
    assert np.abs(got - ref).max() < 1e-6
    # a window with no embedded id or no word pieces stays the zero vector in both
    assert np.array_equal(got == 0, ref == 0)
    # the float32 copy is made once and reused while the embeddings do not change
    assert te._f32() is te._f32()


def test_report_by_layer_is_one_line_per_dictionary_in_layer_order():
    from lmscope.explain.report import BASELINES, Paired, ScoreReport, ScoreRow

    rows = []
    for h in ("blocks.10.mlp_in", "blocks.2.mlp_in", "blocks.1.mlp_in", "blocks.0.mlp_in", "all"):
        r = ScoreRow(h, "stats", "direct", "balanced_accuracy", 7, 0.6, 0.6, 0.5, 0.7)
        lo = 0.01 if h == "blocks.2.mlp_in" else -0.01  # only layer 2 beats (interval above 0)
        r.paired = [
            Paired(BASELINES[0], 7, 0.1, 0.05, 0.15),
            Paired(BASELINES[1], 7, 0.02, lo, 0.05),
        ]
        rows.append(r)
    rep = ScoreReport(rows)
    assert rep.hooks == [
        "blocks.0.mlp_in",
        "blocks.1.mlp_in",
        "blocks.2.mlp_in",
        "blocks.10.mlp_in",
    ]
    lines = rep.text.splitlines()
    per = [ln for ln in lines if ln.startswith("blocks.")]
    assert [ln.split()[0] for ln in per] == rep.hooks  # one line each, natural layer order
    assert [ln.rstrip().endswith("+") for ln in per] == [False, False, True, False]
    assert "+0.020 [+0.010, +0.050] +" in per[2]
    # the "all" rows keep the full layout (method row + one row per baseline)
    assert sum(ln.startswith("all ") for ln in lines) == 1
    assert sum("vs baseline-" in ln for ln in lines) == 2


def test_embed_dtype_auto_follows_the_cpu(monkeypatch):
    import lmscope.models.load as load
    from lmscope.explain import ExplainConfig

    monkeypatch.setattr(load, "cpu_half_is_slow", lambda dtype, device="cpu": True)
    assert ExplainConfig(atlas="a").embed_dtype_resolved == "float32"  # emulated bf16: slower
    monkeypatch.setattr(load, "cpu_half_is_slow", lambda dtype, device="cpu": False)
    assert ExplainConfig(atlas="a").embed_dtype_resolved == "bfloat16"
    assert ExplainConfig(atlas="a", embed_dtype="float32").embed_dtype_resolved == "float32"
    with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
        ExplainConfig(atlas="a", embed_dtype="float16")


def test_corpus_tokens_equal_the_decoded_windows(demo_atlas_root):
    """The explain embedder's spans and token texts, read from the packed peaks, equal what
    decoding every stored window (AtlasDB.example_windows) gives."""
    import json

    from lmscope.atlas.db import AtlasDB
    from lmscope.explain.token_embeddings import corpus_tokens

    db = AtlasDB(demo_atlas_root / "atlas.db", readonly=True)
    hooks = [d.hook for d in db.dictionaries()]
    text, spans = corpus_tokens(db, hooks)
    ref_text: dict[int, str] = {}
    n = 0
    for h in hooks:
        ref = []
        for idx, tid, pos, toks in db.example_windows(h):
            words = json.loads(toks)
            ref.append((idx, tid - pos, tid - pos + len(words)))
            for i, t in enumerate(words):
                ref_text.setdefault(tid - pos + i, t)
        got = sorted(map(tuple, spans[h].tolist()))
        assert got == sorted(ref) and len(got) > 0
        n += len(got)
    assert text == ref_text and n > 100

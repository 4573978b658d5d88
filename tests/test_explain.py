"""Explain: stats explainer on a tiny atlas with a planted 'horse' feature, scorers vs a wrong
label,
baselines, resume, report, and one-line CLI errors (real atlas build, real SQLite)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from lmscope.atlas.db import AtlasDB, Example, FeatureProfile
from lmscope.cli import main
from lmscope.explain import ExplainConfig, baselines, explain_atlas, score_report
from lmscope.explain.report import BASELINES, Paired, paired_bootstrap
from lmscope.explain.scorers.direct import free_text_tokens, score_direct
from lmscope.explain.split import Held, Split, SplitConfig, split_examples
from lmscope.explain.stats_explainer import explain_stats
from lmscope.read.demo import HOOKS, PLANTED, PLANTED_WORD, build_demo_atlas


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_atlas(tmp_path_factory.mktemp("explain") / "atlas")


@pytest.fixture
def atlas(demo, tmp_path):
    dst = tmp_path / "atlas"
    shutil.copytree(demo, dst)
    return dst


def _profile(top, quantiles=(), negatives=()) -> FeatureProfile:
    return FeatureProfile(
        "blocks.0.resid_post",
        0,
        0.5,
        100,
        10.0,
        1.0,
        2.0,
        None,
        None,
        list(top),
        list(quantiles),
        list(negatives),
        [],
        [],
        [],
    )


def _window(
    peak_id: int, score: float, kind: str = "top", W: int = 16, before: int = 11
) -> Example:
    """A W-token window whose peak is global token `peak_id` (11 tokens before it, as the atlas
    stores)."""
    toks = [f" t{peak_id - before + i}" for i in range(W)]
    acts = (
        [score if kind != "negative" else 0.0] * W
        if kind == "dense"
        else [score if i == before else 0.0 for i in range(W)]
    )
    return Example(
        "top" if kind == "dense" else kind,
        toks,
        acts,
        before,
        score if kind != "negative" else 0.0,
        None,
        [],
        peak_id,
    )


def _hand_overlap(shown, held) -> tuple[int, int]:
    """Held-out window tokens whose global id lies in a shown window, counted token by token."""
    seen = set()
    for e in shown:
        for i in range(len(e.tokens)):
            seen.add(e.token_index - e.position + i)
    hit = total = 0
    for e in held:
        for i in range(len(e.tokens)):
            total += 1
            hit += (e.token_index - e.position + i) in seen
    return hit, total


def test_split_deals_whole_contexts_no_overlap_on_dense_feature():
    # A dense feature: in each of 6 contexts (ctx_len 128) it fires on 8 neighbouring tokens, so the
    # atlas keeps 8 overlapping windows per context (peaks 1 token apart, 16-token windows).
    top = [
        _window(c * 128 + 60 + j, 10.0 - c - 0.1 * j, "dense") for c in range(6) for j in range(8)
    ]
    negs = [_window(c * 128 + 20, 0.0, "negative") for c in range(6, 10)]
    p = _profile(top, negatives=negs)
    # The old split dealt neighbours alternately: per context the shown windows (peaks 60, 62, 64,
    # 66)
    # cover tokens 49..70, so held-out windows (peaks 61, 63, 65, 67: 16 tokens each) lie inside
    # them
    # but for token 71: 63 of 64 tokens, 378 of 384 in all (98.4%). Recounted by hand so the test
    # fails for that method.
    old_shown, old_held = top[0::2], top[1::2]
    assert _hand_overlap(old_shown, old_held) == (6 * (4 * 16 - 1), 6 * 4 * 16)
    for ctx_len in (128, None):  # by context, and by overlapping spans when ctx_len is unknown
        sp = split_examples(p, SplitConfig(ctx_len=ctx_len))
        held = sp.valid.pos + sp.valid.neg + sp.test.pos + sp.test.neg
        assert _hand_overlap(sp.shown, held) == (0, len(held) * 16)
        # Whole contexts: 6 groups of 8 windows dealt 0.4/0.2/0.4 by activation rank:
        # shown, test, valid, shown, test, shown (the part furthest below its share each time).
        ctx = lambda es: sorted({e.token_index // 128 for e in es})  # noqa: E731
        assert (
            ctx(sp.shown) == [0, 3, 5] and ctx(sp.test.pos) == [1, 4] and ctx(sp.valid.pos) == [2]
        )
        assert len(sp.shown) == 24 and len(sp.test.pos) == 16 and len(sp.valid.pos) == 8
        # The 4 negative windows (one per context) are dealt valid/test by the 1:2 share, each to
        # the
        # part furthest below it: test (0.2 vs 0.4), valid (0.4 vs -0.2), test (-0.4 vs 0.2), valid.
        assert [e.token_index // 128 for e in sp.test.neg] == [6, 8]
        assert [e.token_index // 128 for e in sp.valid.neg] == [7, 9]


def test_split_drops_negatives_that_meet_a_shown_window():
    top = [_window(60, 5.0), _window(300, 4.0), _window(600, 3.0)]
    neg_near = _window(66, 0.0, "negative")  # span 55..70 meets the shown window 49..64
    neg_far = _window(1000, 0.0, "negative")
    sp = split_examples(_profile(top, negatives=[neg_near, neg_far]), SplitConfig(ctx_len=None))
    assert [e.token_index for e in sp.shown] == [60]
    assert neg_near not in sp.valid.neg + sp.test.neg and neg_far in sp.valid.neg + sp.test.neg


def test_split_on_real_atlas_is_disjoint_and_holds_out(demo):
    with AtlasDB(demo / "atlas.db") as db:
        p = db.feature(HOOKS[0], PLANTED)
    sp = split_examples(p, SplitConfig(ctx_len=16))  # the demo atlas's contexts
    assert sp.shown and sp.test.pos and sp.test.neg
    held = sp.valid.pos + sp.valid.neg + sp.test.pos + sp.test.neg
    assert _hand_overlap(sp.shown, held)[0] == 0
    assert all(max(e.acts) == 0 for e in sp.test.neg + sp.valid.neg)


def _text_window(words: list[str], fire: str, idx: int, kind: str = "top") -> Example:
    acts = [1.0 if (w == fire and kind != "negative") else 0.0 for w in words]
    return Example(kind, words, acts, 0, max(acts), None, [], idx)


_S1 = ["I", " saw", ",", " the", " cat", ",", " and", " ran"]  # "," twice, " the" once
_S2 = ["We", " met", ",", " then", " left", " home", ",", " ok"]  # "," twice, no " the"
_N = ["Oh", ",", " it", " is", " fine", " now", " so", " go"]  # one ","


@pytest.mark.parametrize("fire", [",", " the"])
def test_direct_scores_punctuation_and_function_word_labels_by_token_list(fire):
    # A planted feature that fires exactly on `fire`. The explainer sees 4 windows; the scorer
    # judges
    # held-out windows: 2 activating (_S1, _S1) + 2 non-activating (_N, _N) for " the", or for ","
    # 2 activating (_S1, _S2) + 2 non-activating (_N, _N).
    shown = [_text_window(_S1, fire, 100 * i) for i in range(4)]
    pos = [_text_window(_S1, fire, 1000), _text_window(_S1 if fire == " the" else _S2, fire, 1100)]
    neg = [_text_window(_N, fire, 2000, "negative"), _text_window(_N, fire, 2100, "negative")]
    held = Held(pos, neg)
    sp = Split(shown, Held(), held)
    e = explain_stats(_profile(shown), sp)
    key = fire.strip()
    assert e.tokens == [key]
    # The old contract parsed the label text with a stop list: "," and "the" vanished, 0.5 for all.
    assert free_text_tokens(e.label.split(" | says")[0]) == set()
    got = score_direct(e.label, held, e.details()["tokens"])
    if fire == ",":
        # firing tokens: 4 commas, all named (recall 1); silent: 12 + 16 = 28, of which the 2 commas
        # of the _N windows are named -> specificity 26/28.
        assert got.value == pytest.approx((1 + 26 / 28) / 2) and got.n_pos == 4 and got.n_neg == 28
    else:
        # firing: 2 " the" (recall 1); silent: 14 + 16 = 30, none is " the" -> 1.0.
        assert got.value == 1.0 and got.n_pos == 2 and got.n_neg == 30
    # The equal-budget top-token baseline: the top 3 firing tokens of the shown part = just `key`
    # (nothing else fires), plus the label's own output part -> the same score here.
    text, toks = baselines.top_token_label(sp, ["x"])
    assert toks == [key] and text == f'{key} | says "x"'
    assert score_direct(text, held, toks).value == got.value
    # A random baseline naming another feature's token ("and"): in the "," case " and" is silent
    # once
    # in _S1 -> recall 0, specificity 27/28; in the " the" case twice -> 28/30.
    other = score_direct("and", held, ["and"]).value
    assert other == pytest.approx((0 + 27 / 28) / 2 if fire == "," else (0 + 28 / 30) / 2)


def test_top_token_baseline_takes_the_three_highest_firing_tokens():
    w1 = Example("top", ["a", " b", " c", " d"], [0.0, 3.0, 1.0, 0.5], 1, 3.0, None, [], 10)
    w2 = Example("top", [" B", " e", " f", "g"], [4.0, 2.0, 0.0, 0.2], 0, 4.0, None, [], 50)
    sp = Split([w1, w2], Held(), Held())
    # max activation per token: b 4.0 (" B" normalizes to "b"), e 2.0, c 1.0, d 0.5, g 0.2
    assert baselines.top_tokens(sp) == ["b", "e", "c"]
    assert baselines.top_token_label(Split([], Held(), Held())) is None


def test_stats_label_names_planted_token(demo):
    with AtlasDB(demo / "atlas.db") as db:
        for hook in HOOKS:
            p = db.feature(hook, PLANTED)
            e = explain_stats(p, split_examples(p, SplitConfig(ctx_len=16)))
            assert e.tokens == [PLANTED_WORD], e.label
            # the demo's output side is a random tiny model's: it says so rather than print it
            assert e.label.startswith(PLANTED_WORD) and (
                "says" in e.label or "output: no clear pattern" in e.label
            )
            assert e.precision == 1.0 and e.recall == 1.0


def test_scorers_rank_correct_above_wrong(demo, tmp_path):
    from lmscope.explain.scorers.embedding import embedder, label_vector, score_embedding
    from lmscope.explain.scorers.simulation import score_simulation
    from lmscope.explain.token_embeddings import ContextEmbedder

    with AtlasDB(demo / "atlas.db") as db:
        p = db.feature(HOOKS[0], PLANTED)
        ctx = ContextEmbedder(db, [HOOKS[0]], 16, tmp_path, embedder())
    sp = split_examples(p, SplitConfig(ctx_len=16))
    good, bad = (
        score_direct(PLANTED_WORD, sp.test, [PLANTED_WORD]),
        score_direct("fish, river", sp.test),
    )
    assert good.value == 1.0 and bad.value <= 0.5
    assert good.details["precision"] == 1.0 and good.details["recall"] == 1.0
    te = ctx.ensure(ctx.spans_of([(HOOKS[0], PLANTED)]))
    assert ctx.embedded_tokens > 0 and ctx.path.is_file()
    emb = embedder()
    horse, capital = label_vector("horse", emb), label_vector("the capital of france", emb)
    every = Held(
        p.top + p.quantiles, p.negatives
    )  # more windows than the test part: a sharper check
    hv = te.held(every)
    assert score_embedding(horse, hv).value > score_embedding(capital, hv).value
    assert score_simulation(horse, hv).value > score_simulation(capital, hv).value
    assert free_text_tokens('horse, pony | after "the" | says "gallop"') == {"horse", "pony"}
    from lmscope.explain.token_embeddings import label_phrases

    # The input side only (what these scorers judge), a structured "," kept although the split drops
    # it.
    assert label_phrases('horse, pony | after "the" | says "gallop"') == ["horse", "pony", "the"]
    assert label_phrases(', | says "x"', [","]) == [","]


def test_explain_runner_baselines_resume_report(atlas):
    cfg = ExplainConfig(atlas=str(atlas), scorers="direct,embedding,simulation")
    r1 = explain_atlas(cfg, progress=False)
    assert r1.explained == r1.selected > 10 and r1.skipped == 0
    with AtlasDB(atlas / "atlas.db") as db:
        ex = {e.method: e for e in db.explanations(HOOKS[0], PLANTED)}
        assert ex["stats"].text.startswith(PLANTED_WORD)
        assert {"baseline-random", "baseline-toptoken"} <= set(ex)
        assert ex["stats"].scores[0].value > ex["baseline-random"].scores[0].value
        n = db._q("SELECT COUNT(*) FROM explanations")[0][0]
    r2 = explain_atlas(cfg, progress=False)  # resume: nothing left
    assert r2.explained == 0 and r2.skipped == r1.selected
    with AtlasDB(atlas / "atlas.db") as db:
        assert db._q("SELECT COUNT(*) FROM explanations")[0][0] == n
    rep = score_report(atlas)
    assert {r.scorer for r in rep.rows if r.method == "stats"} == {
        "direct",
        "embedding",
        "simulation",
    }
    stats = [r for r in rep.rows if r.method == "stats" and r.scorer == "direct"]
    assert [r.hook for r in stats] == [*HOOKS, "all"] and all(
        {p.baseline for p in r.paired} == set(BASELINES) for r in stats
    )
    assert main(["explain-report", str(atlas)]) == 0
    assert (atlas / "plots" / "explain_scores.png").stat().st_size > 1000


def _fake_embeddings():
    import numpy as np

    from lmscope.explain.token_embeddings import TokenEmbeddings

    # 4 tokens (global ids 0..3) in a 2-d space; the label points along x.
    vecs = np.array([[1, 0], [0, 1], [1, 1], [0, 2]], dtype=np.float16)
    return TokenEmbeddings(np.arange(4), vecs, np.ones(4, dtype=np.int16)), np.array([1.0, 0.0])


def test_simulation_and_embedding_scores_by_hand():
    from lmscope.explain.scorers.embedding import score_embedding
    from lmscope.explain.scorers.simulation import pearson, score_simulation

    te, label = _fake_embeddings()
    pos = Example("top", ["a", "b"], [3.0, 0.0], 0, 3.0, None, [], 0)  # tokens 0, 1
    neg = Example("negative", ["c", "d"], [0.0, 0.0], 0, 0.0, None, [], 2)  # tokens 2, 3
    held = Held([pos], [neg])
    # Predicted activations = cosines with the label: 1, 0, 1/sqrt(2), 0; true: 3, 0, 0, 0.
    # Centred: pred - 0.42678 = (0.57322, -0.42678, 0.28033, -0.42678); act - 0.75 = (2.25, -0.75
    # x3);
    # sum of products 1.28975 + 0.75 x 0.57323 = 1.71967; norms sqrt(0.77144) and sqrt(6.75):
    # r = 1.71967 / 2.28193 = 0.75361.
    got = score_simulation(label, te.held(held))
    assert got.value == pytest.approx(0.75361, abs=1e-4) and (got.n_pos, got.n_neg) == (1, 3)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / (2 * 14 / 3) ** 0.5)
    assert math.isnan(pearson([1, 1, 1], [0, 1, 2]))
    # Windows: mean of their tokens' vectors: (0.5, 0.5) -> cosine 0.7071; (0.5, 1.5) -> 0.3162.
    # One positive above the one negative: AUROC 1. The reverse label (along y): 0.7071 < 0.9487 ->
    # 0.
    assert score_embedding(label, te.held(held)).value == 1.0
    assert score_embedding(np.array([0.0, 1.0]), te.held(held)).value == 0.0


def test_judges_sample_across_activation_quantiles():
    from lmscope.explain.scorers.detection import across_quantiles

    ws = [Example("quantile", ["x"], [float(s)], 0, float(s), None, [], s) for s in range(1, 11)]
    # 10 windows ranked 10..1; 4 evenly spaced ranks: 0, 3, 6, 9 -> activations 10, 7, 4, 1.
    assert [e.score for e in across_quantiles(ws, 4)] == [10, 7, 4, 1]
    assert len(across_quantiles(ws, 50)) == 10


def test_paired_bootstrap_by_hand():
    # Constant differences: every resample has the same mean.
    assert paired_bootstrap([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))
    # Two features, d = -0.1 and 0.3: a resample's mean is -0.1 (prob 1/4), 0.1 (1/2) or 0.3 (1/4),
    # so
    # the 2.5% and 97.5% percentiles are -0.1 and 0.3. The mean (0.1) is above 0 but the interval is
    # not:
    # "does not beat" (the old rule, mean above the baseline's mean, said yes).
    assert paired_bootstrap([-0.1, 0.3]) == pytest.approx((0.1, -0.1, 0.3))
    assert Paired("b", 2, 0.1, -0.1, 0.3).verdict == "does not beat"
    assert Paired("b", 3, 0.2, 0.1, 0.3).verdict == "beats"


def test_report_pairs_each_method_with_its_own_baselines(atlas):
    with AtlasDB(atlas / "atlas.db") as db:

        def put(f, method, v, for_m=None):
            eid = db.add_explanation(
                HOOKS[0], f, "x", method=method, details={"for": for_m} if for_m else None
            )
            db.add_score(
                eid, scorer="direct", metric="balanced_accuracy", value=v, n_pos=1, n_neg=1
            )

        for f, (m, top, rand) in enumerate([(0.9, 0.6, 0.9), (0.8, 0.6, 0.9), (0.7, 0.6, 0.9)]):
            put(f, "stats", m)
            put(f, "baseline-toptoken", top, "stats")
            put(f, "baseline-random", rand, "stats")
            put(
                f, "baseline-toptoken", 1.0, "llm"
            )  # another method's baseline: never paired with stats
    rep = score_report(atlas)
    (row,) = [r for r in rep.rows if r.method == "stats" and r.hook == HOOKS[0]]
    got = {p.baseline: p for p in row.paired}
    # vs top-token: d = 0.3, 0.2, 0.1; a resample's mean is 0.1 with prob 1/27 > 2.5% and 0.3
    # likewise,
    # so the interval is [0.1, 0.3]: beats.
    t = got["baseline-toptoken"]
    assert (t.n, t.mean_diff, t.lo, t.hi) == (
        3,
        pytest.approx(0.2),
        pytest.approx(0.1),
        pytest.approx(0.3),
    )
    # vs random: d = 0, -0.1, -0.2 -> [-0.2, 0]: does not beat.
    r = got["baseline-random"]
    assert (r.mean_diff, r.lo, r.hi) == (
        pytest.approx(-0.1),
        pytest.approx(-0.2),
        pytest.approx(0.0),
    )
    assert t.verdict == "beats" and r.verdict == "does not beat" and row.beats is False
    assert "baseline-toptoken (for llm)" in rep.text and "does not beat" in rep.text


def test_cli_bad_input(atlas, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(tmp_path / "empty")]) == 2
    assert "atlas build" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--features", f"{HOOKS[0]}/99999"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--features", "blocks.9.resid_post/1"]) == 2
    assert main(["explain", str(atlas), "--explainer", "llm"]) == 2
    assert "--llm" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--scorers", "magic"]) == 2
    assert (
        main(
            [
                "explain",
                str(atlas),
                "--features",
                f"{HOOKS[0]}/{PLANTED}",
                "--scorers",
                "direct",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )

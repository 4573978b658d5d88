"""Attribution graphs on tiny real models: the science (edges predict interventions) and the
format."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmscope.dictionaries import build, transcoder_config
from lmscope.dictionaries.dictmath import decoder_rows, encoder_affine, skip_term
from lmscope.errors import UserError
from lmscope.models.tiny import tiny_model
from lmscope.trace import (
    build_graph,
    check_transcoders,
    graph_json,
    graph_scores,
    prune,
    replacement,
)
from lmscope.trace.frozen import frozen
from lmscope.trace.graph import Graph, feature_input, logit_input, logit_nodes
from lmscope.trace.prune import PruneResult, circuit_tracer_scores, scores

PROMPT = "the cat sat on the big red house"


def random_transcoders(lm, d_sae=64, k=4, skip_layers=(), arch="topk"):
    """Random sparse transcoders mlp_in -> mlp_out for every layer (nonzero biases, some skips)."""
    tcs = {}
    for L in range(lm.n_layers):
        tc = build(
            transcoder_config(L, lm.d_model, d_sae, arch=arch, k=k, seed=L, skip=L in skip_layers)
        )
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(10 + L))
            tc.b_dec.normal_(0, 0.01, generator=torch.Generator().manual_seed(20 + L))
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(30 + L))
        tcs[L] = tc.eval()
    return tcs


@pytest.fixture(scope="module")
def setup():
    lm = tiny_model("llama", n_layers=3)
    tcs = random_transcoders(lm, skip_layers=(1,))
    g = build_graph(lm, tcs, PROMPT, batch_size=16)
    return lm, tcs, g


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_frozen_forward_equals_real(family):
    lm = tiny_model(family, n_layers=2)
    toks = lm.to_tokens(PROMPT)
    ref = lm.model(toks).logits
    with frozen(lm) as fz:
        rec = fz.record(toks).logits
        fz.frozen = True
        fro = lm.model(toks.repeat(3, 1)).logits
    assert (rec - ref).abs().max() < 1e-5
    assert (fro - ref).abs().max() < 1e-5
    assert lm.model.config._attn_implementation != "lmscope_frozen"  # restored


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_replacement_forward_is_exact(family):
    lm = tiny_model(family, n_layers=2)
    tcs = random_transcoders(lm, skip_layers=(0,))
    toks = lm.to_tokens(PROMPT)
    ref = lm.model(toks).logits[0]
    with replacement(lm, tcs, toks) as rep:
        out = rep.forward(1).logits[0]
        # error nodes are what makes it exact: without them the output moves
        no_err = rep.forward(
            1, errors={L: torch.zeros_like(st.error) for L, st in rep.layers.items()}
        ).logits[0]
    assert (out - ref).abs().max() < 1e-4
    assert (no_err - ref).abs().max() > 1e-3
    assert all(p.requires_grad for p in lm.model.parameters())  # restored


def test_dictmath_matches_encode_decode():
    lm = tiny_model("llama", n_layers=1)
    tc = random_transcoders(lm, skip_layers=(0,), arch="relu")[0]
    with torch.no_grad():
        tc.act_scale.fill_(1.7)
        tc.act_scale_out.fill_(0.6)
        x = torch.randn(5, lm.d_model)
        a = tc.encode(x)
        aff = encoder_affine(tc)
        assert torch.allclose(torch.relu(x @ aff.weight + aff.bias), a, atol=1e-5)
        lin = tc.decode(a, x) - tc.decode(torch.zeros_like(a), x)
        assert torch.allclose(lin, a @ decoder_rows(tc), atol=1e-5)
        zero = tc.decode(torch.zeros_like(a), x)
        assert torch.allclose(zero, tc.b_dec / tc.act_scale_out + skip_term(tc, x), atol=1e-5)


def test_every_edge_predicts_its_intervention(setup):
    """In the replacement model, removing a source node changes each target's input by -edge.

    Feature activations are inputs of the replacement model, so this is the direct effect,
    and the model is linear in it (attention patterns and norm scales frozen): exact up to
    float rounding, for features, error nodes and token embeddings alike.
    """
    lm, tcs, g = setup
    A = g.adjacency
    tol = 1e-4 * float(A.abs().max()) + 1e-5
    toks = lm.to_tokens(PROMPT)
    with replacement(lm, tcs, toks) as rep:
        base = rep.forward(1)

        def check(run, col):
            for li, tok in enumerate(g.logit_tokens):
                actual = float(logit_input(rep, run, tok) - logit_input(rep, base, tok))
                assert abs(actual + float(A[g.logit_start + li, col])) < tol
            for ti in range(g.n_features):
                L, p, f = g.features[ti].tolist()
                actual = float(feature_input(rep, run, L, p, f) - feature_input(rep, base, L, p, f))
                assert abs(actual + float(A[ti, col])) < tol, (ti, col)

        n_checked = 0
        for si in range(0, g.n_features, 5):  # features: set the activation to 0
            L, p, f = g.features[si].tolist()
            acts = rep.layers[L].acts.clone()[None]
            acts[0, p, f] = 0.0
            check(rep.forward(1, acts={L: acts}), si)
            n_checked += 1
        for L, p in [(0, 2), (1, 5), (2, 7)]:  # error nodes: set to 0
            err = rep.layers[L].error.clone()
            err[p] = 0
            check(rep.forward(1, errors={L: err}), g.error_index(L, p))
        for p in (1, 4):  # token embeddings: set to 0
            emb = rep.embed.clone()
            emb[p] = 0
            check(rep.forward(1, embed=emb), g.token_start + p)
    assert n_checked >= 5
    assert (A[: g.n_features].abs().sum() > 0) and (A[g.logit_start :].abs().sum() > 0)


def test_edges_are_causal_and_layered(setup):
    lm, tcs, g = setup
    A = g.adjacency
    for t in range(g.n_features):
        Lt, pt, _ = g.features[t].tolist()
        for s in range(g.n_features):
            Ls, ps, _ = g.features[s].tolist()
            if Ls >= Lt or ps > pt:
                assert A[t, s] == 0
    assert A[:, g.logit_start :].abs().sum() == 0  # nothing reads a logit
    assert A[g.error_start : g.logit_start].abs().sum() == 0  # errors and tokens have no inputs


def test_batched_backward_equals_one_at_a_time(setup):
    lm, tcs, g = setup
    g1 = build_graph(lm, tcs, PROMPT, batch_size=1)
    assert torch.equal(g1.features, g.features)
    assert torch.allclose(g1.adjacency, g.adjacency, atol=1e-5 * float(g.adjacency.abs().max()))


def _direct_logit_share(g, cols):
    """For each column: sum over logits of p_logit x |A[logit, col]| / sum_s |A[logit, s]|, by
    hand."""
    out = []
    for c in cols:
        v = 0.0
        for li in range(len(g.logit_tokens)):
            row = g.adjacency[g.logit_start + li]
            v += float(g.logit_probs[li]) * abs(float(row[c])) / float(row.abs().sum())
        out.append(v)
    return torch.tensor(out)


def test_max_feature_nodes_keeps_the_most_influential(setup):
    """The first batch expanded is the top features by direct influence on the logits.

    Before any feature row is known, a feature's influence is its share of the logits'
    inputs weighted by the logit probabilities, computed here by hand from the full graph's
    logit rows (which do not depend on which features get expanded). A random choice of 4
    of the ~90 active features matches that top 4 with probability ~1e-6.
    """
    lm, tcs, g = setup
    assert g.stats["unexpanded_features"] == 0
    small = build_graph(lm, tcs, PROMPT, batch_size=4, max_feature_nodes=4)
    assert small.n_features == 4 and small.stats["active_features"] == g.n_features
    assert small.stats["unexpanded_features"] == g.n_features - 4
    share = _direct_logit_share(g, range(g.n_features))
    top4 = {tuple(g.features[i].tolist()) for i in share.topk(4).indices.tolist()}
    assert share.sort(descending=True).values[3] > share.sort(descending=True).values[4]  # no tie
    assert {tuple(r) for r in small.features.tolist()} == top4


def test_max_feature_nodes_follows_a_planted_feature(setup):
    """Scale one feature's decoder row by c so that, in every logit row, its direct effect is at
    least 4x any other feature's: by construction it is the most influential, expanded first.
    (The replacement model stays exact: the error node of its layer absorbs the change.)"""
    import copy

    lm, tcs, g = setup
    # A feature below the top 5 that fires at one position only (the plant scales every position).
    lf = [tuple(r) for r in g.features[:, [0, 2]].tolist()]
    ranked = _direct_logit_share(g, range(g.n_features)).argsort(descending=True).tolist()
    i = next(j for j in ranked[5:] if lf.count(lf[j]) == 1)
    L, p, f = g.features[i].tolist()
    logit_rows = g.adjacency[g.logit_start :, : g.n_features].abs()
    others = torch.cat([logit_rows[:, :i], logit_rows[:, i + 1 :]], 1).max(1).values
    assert (logit_rows[:, i] > 0).all()
    c = 4 * float((others / logit_rows[:, i]).max())
    planted = dict(tcs)
    planted[L] = copy.deepcopy(tcs[L])
    with torch.no_grad():
        planted[L].W_dec[f] *= c
    one = build_graph(lm, planted, PROMPT, batch_size=4, max_feature_nodes=1)
    assert one.features.tolist() == [[L, p, f]]
    assert ranked[0] != i  # without the plant, another one is first


def test_unexpanded_features_are_folded_into_error_nodes(setup):
    """Active features left out by max_feature_nodes become error: their edges add to the error
    node of their (layer, position), and that error edge still predicts zeroing the error vector
    together with those features in the replacement model (the graph stays exact)."""
    lm, tcs, g = setup
    small = build_graph(lm, tcs, PROMPT, batch_size=8, max_feature_nodes=16)
    full_id = {tuple(r): i for i, r in enumerate(g.features.tolist())}
    kept = [full_id[tuple(r)] for r in small.features.tolist()]
    left = sorted(set(range(g.n_features)) - set(kept))
    assert small.stats["unexpanded_features"] == len(left) > 0
    assert small.stats["unexpanded_fraction"] == pytest.approx(len(left) / g.n_features)
    # By hand, from the full graph: rows of the kept features and the logits; the error
    # column (L, p) gains every left-out feature at (L, p).
    rows = kept + list(range(g.logit_start, g.n_nodes))
    small_rows = list(range(small.n_features)) + list(range(small.logit_start, small.n_nodes))
    tol = 1e-4 * float(g.adjacency.abs().max())
    for rs, rf in zip(small_rows, rows):
        for L in range(g.n_layers):
            for p in range(g.n_pos):
                want = float(g.adjacency[rf, g.error_index(L, p)])
                want += sum(
                    float(g.adjacency[rf, i])
                    for i in left
                    if g.features[i, 0] == L and g.features[i, 1] == p
                )
                assert abs(float(small.adjacency[rs, small.error_index(L, p)]) - want) < tol
        for j, i in enumerate(kept):
            assert abs(float(small.adjacency[rs, j]) - float(g.adjacency[rf, i])) < tol
    # Undoing the fold gives circuit-tracer's adjacency: the left-out columns simply gone.
    ct = small.adjacency_as_circuit_tracer()
    assert torch.allclose(
        ct[small_rows][:, small.error_start :], g.adjacency[rows][:, g.error_start :], atol=tol
    )
    # Exact: zero the error vector and the left-out features at (L, p); every kept target's
    # input moves by minus the folded error edge.
    L, p = max(
        ((int(g.features[i, 0]), int(g.features[i, 1])) for i in left),
        key=lambda lp: sum(1 for i in left if tuple(g.features[i, :2].tolist()) == lp),
    )
    col = small.error_index(L, p)
    toks = lm.to_tokens(PROMPT)
    with replacement(lm, tcs, toks) as rep:
        base = rep.forward(1)
        err = rep.layers[L].error.clone()
        err[p] = 0
        acts = rep.layers[L].acts.clone()[None]
        for i in left:
            if tuple(g.features[i, :2].tolist()) == (L, p):
                acts[0, p, int(g.features[i, 2])] = 0.0
        run = rep.forward(1, errors={L: err}, acts={L: acts})
        for li, tok in enumerate(small.logit_tokens):
            actual = float(logit_input(rep, run, tok) - logit_input(rep, base, tok))
            assert abs(actual + float(small.adjacency[small.logit_start + li, col])) < tol
        for ti in range(small.n_features):
            Lt, pt, ft = small.features[ti].tolist()
            actual = float(
                feature_input(rep, run, Lt, pt, ft) - feature_input(rep, base, Lt, pt, ft)
            )
            assert abs(actual + float(small.adjacency[ti, col])) < tol
    # Scores: by hand on the folded adjacency (checked entry by entry above); circuit-tracer's
    # version on the adjacency with the left-out columns dropped, which differs.
    assert small.adjacency[small.error_start : small.logit_start].abs().sum() == 0
    ours, theirs = graph_scores(small), circuit_tracer_scores(small)
    assert tuple(ours) == pytest.approx(_scores_by_hand(small, small.adjacency), rel=1e-4)
    ct_full = _scores_by_hand(small, small.adjacency_as_circuit_tracer())
    assert (theirs["replacement_score"], theirs["completeness_score"]) == pytest.approx(
        ct_full, rel=1e-4
    )
    assert abs(ours.replacement - ct_full[0]) > 1e-4
    # The JSON says how many were left out.
    meta = graph_json(small, prune(small))["metadata"]["lmscope"]
    assert meta["active_features"] == g.n_features and meta["unexpanded_features"] == len(left)
    assert meta["unexpanded_fraction"] == pytest.approx(len(left) / g.n_features)


def _scores_by_hand(g, A):
    """Replacement and completeness with the influence as w ((I - B)^-1 - I), B = |A|
    row-normalized."""
    B = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-10)
    w = torch.zeros(g.n_nodes)
    w[g.logit_start :] = g.logit_probs
    infl = w @ torch.linalg.inv(torch.eye(g.n_nodes) - B) - w
    tok = float(infl[g.token_start : g.logit_start].sum())
    err = float(infl[g.error_start : g.token_start].sum())
    weight = infl + w
    comp = ((1 - B[:, g.error_start : g.token_start].sum(1)) * weight).sum() / weight.sum()
    return tok / (tok + err), float(comp)


def test_logit_nodes():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    assert logit_nodes(probs, None, desired_prob=0.75) == [0, 1]
    assert logit_nodes(probs, 3, desired_prob=0.75) == [3, 0, 1]
    assert len(logit_nodes(torch.full((100,), 0.01), None, max_logits=10)) == 10


def hand_graph(logit_from_f1: float = 2.0) -> Graph:
    """7 nodes, 1 layer, 2 positions: f0, f1 (layer 0, pos 1), errors e00 e01, tokens t0 t1, logit.

    f0 <- t1: 3, f0 <- t0: -1          logit <- f0: 1, logit <- f1: 2, logit <- e01: 1
    f1 <- t0: 1, f1 <- t1: 1           (rows = targets; logit probability 0.6)
    """
    A = torch.zeros(7, 7)
    f0, f1, e00, e01, t0, t1, lg = range(7)
    A[f0, t1], A[f0, t0] = 3.0, -1.0
    A[f1, t0], A[f1, t1] = 1.0, 1.0
    A[lg, f0], A[lg, f1], A[lg, e01] = 1.0, logit_from_f1, 1.0
    return Graph.from_adjacency(
        prompt="a b",
        tokens=[5, 6],
        str_tokens=["a", " b"],
        n_layers=1,
        features=torch.tensor([[0, 1, 10], [0, 1, 11]]),
        activations=torch.tensor([1.0, 1.0]),
        logit_tokens=[7],
        logit_strs=[" c"],
        logit_probs=torch.tensor([0.6]),
        adjacency=A,
    )


def hand_mask() -> PruneResult:
    """Keep f0 (drop f1), keep e01 (drop e00), every edge but f0 <- t0."""
    node = torch.tensor([True, False, False, True, True, True, True])
    edge = (hand_graph().adjacency != 0) & node[:, None] & node[None, :]
    edge[0, 4] = False
    return PruneResult.from_dense(node, edge, torch.zeros(7), torch.zeros(7))


def test_scores_by_hand_full_graph():
    """compute_graph_scores on the 7-node graph, worked out by hand.

    B (|A| row-normalized): logit: f0 1/4, f1 2/4, e01 1/4; f0: t1 3/4, t0 1/4; f1: t0 1/2, t1 1/2.
    Influence from the logit (w = 0.6): f0 .15, f1 .30, e01 .15;
    t0 = .15/4 + .30/2 = .1875, t1 = .15*3/4 + .30/2 = .2625.
    replacement = (t0 + t1) / (t0 + t1 + e01) = .45 / .60 = 0.75.
    completeness: weights I + w = f0 .15, f1 .30, e01 .15, t0 .1875, t1 .2625, logit .6 (sum 1.65);
    only the logit has error input (1/4): (1.65 - .6/4) / 1.65 = 1.5 / 1.65 = 0.90909.
    """
    s = graph_scores(hand_graph())
    assert s.replacement == pytest.approx(0.75, abs=1e-6)
    assert s.completeness == pytest.approx(1.5 / 1.65, abs=1e-6)


def test_pruned_scores_by_hand_fold_dropped_features_into_errors():
    """Pruned scores: f1 is folded into e01 (same layer and position), f0 <- t0 is masked.

    After the fold: logit <- f0: 1, logit <- e01: 1 + 2 = 3; f0 <- t1: 3 only; f1 gone.
    B: logit: f0 1/4, e01 3/4; f0: t1 1.
    Influence (w = .6): f0 .15, e01 .45, t1 .15, t0 0.
    replacement = .15 / (.15 + .45) = 0.25.
    completeness: weights f0 .15, e01 .45, t1 .15, logit .6 (sum 1.35); the logit's input is
    3/4 error: (1.35 - .6 * 3/4) / 1.35 = .9 / 1.35 = 0.6667.

    The old method (dropped features relabelled as error but kept with their inputs, edge
    mask ignored) counts f1's influence both as error (.30) and, through its inputs, as
    token influence: replacement .45 / (.45 + .15 + .30) = 0.5, completeness
    (1.65 - .6 * 3/4) / 1.65 = 0.727.
    """
    g, m = hand_graph(), hand_mask()
    s = graph_scores(g, m)
    assert s.replacement == pytest.approx(0.25, abs=1e-6)
    assert s.completeness == pytest.approx(0.9 / 1.35, abs=1e-6)
    # The fold is signed: f1 writing -2 into the logit cancels the error's +1 (|1 - 2| = 1).
    neg = graph_scores(hand_graph(logit_from_f1=-2.0), m)
    # logit: f0 1/2, e01 1/2 -> f0 .3, e01 .3, t1 .3: replacement .5, completeness (1.5 - .3) / 1.5
    assert neg.replacement == pytest.approx(0.5, abs=1e-6)
    assert neg.completeness == pytest.approx(1.2 / 1.5, abs=1e-6)
    # As circuit-tracer's "pruned graph" figures are computed (f1 zeroed, not folded):
    # logit: f0 1/2, e01 1/2 -> f0 .3, e01 .3, t1 .3 -> replacement .5, above the folded 0.25.
    P = g.adjacency * m.node_mask[:, None] * m.node_mask[None, :] * m.edge_mask
    is_err = torch.tensor([False, False, True, True, False, False, False])
    is_tok = torch.tensor([False, False, False, False, True, True, False])
    zeroed = scores(P, torch.tensor([0, 0, 0, 0, 0, 0, 0.6]), is_err, is_tok)
    assert zeroed.replacement == pytest.approx(0.5, abs=1e-6)


def test_pruning_and_scores(setup):
    lm, tcs, g = setup
    pr = prune(g, 0.8, 0.98)
    assert pr.node_mask[g.token_start :].all()  # tokens and logits always kept
    assert 0 < int(pr.node_mask[: g.n_features].sum()) < g.n_features
    # Every feature kept by the node threshold has at least the influence of every dropped one.
    nf = g.n_features
    pre = pr.influence[:nf] >= _threshold_by_hand(pr.influence, 0.8)
    assert pr.node_mask[:nf].le(pre).all()  # dangling removal only drops more
    assert float(pr.influence[:nf][pre].min()) >= float(pr.influence[:nf][~pre].max())
    # Influence by hand: w (I - B)^-1 - w, B nilpotent.
    B = g.adjacency.abs() / g.adjacency.abs().sum(1, keepdim=True).clamp_min(1e-10)
    w = torch.zeros(g.n_nodes)
    w[g.logit_start :] = g.logit_probs
    ref = w @ torch.linalg.inv(torch.eye(g.n_nodes) - B) - w
    assert torch.allclose(pr.influence, ref, atol=1e-5 * float(ref.max()))
    # Scores by hand on this graph: full from `ref`, pruned on a fold written as loops.
    is_err = torch.zeros(g.n_nodes, dtype=torch.bool)
    is_err[g.error_start : g.token_start] = True
    tok = ref[g.token_start : g.logit_start].sum()
    full = graph_scores(g)
    assert full.replacement == pytest.approx(float(tok / (tok + ref[is_err].sum())), rel=1e-5)
    weight = ref + w
    comp = ((1 - B[:, is_err].sum(1)) * weight).sum() / weight.sum()
    assert full.completeness == pytest.approx(float(comp), rel=1e-5)
    M = g.adjacency.clone()
    for i in range(nf):
        if not pr.node_mask[i]:
            L, p, _ = g.features[i].tolist()
            for t in range(g.n_nodes):
                M[t, g.error_index(L, p)] += g.adjacency[t, i]
            M[i, :] = 0
            M[:, i] = 0
    for j in range(nf, g.n_nodes):
        if not pr.node_mask[j]:
            M[j, :] = 0
            M[:, j] = 0
    M = M * pr.edge_mask
    Bm = M.abs() / M.abs().sum(1, keepdim=True).clamp_min(1e-10)
    refm = w @ torch.linalg.inv(torch.eye(g.n_nodes) - Bm) - w
    tokm = refm[g.token_start : g.logit_start].sum()
    part = graph_scores(g, pr)
    assert part.replacement == pytest.approx(float(tokm / (tokm + refm[is_err].sum())), rel=1e-4)
    weightm = refm + w
    compm = ((1 - Bm[:, is_err].sum(1)) * weightm).sum() / weightm.sum()
    assert part.completeness == pytest.approx(float(compm), rel=1e-4)
    # Keeping everything reproduces the full scores (nothing folded, no edge dropped).
    every = PruneResult.from_dense(
        torch.ones(g.n_nodes, dtype=torch.bool), g.adjacency != 0, pr.cumulative, pr.influence
    )
    assert graph_scores(g, every) == pytest.approx(tuple(full), abs=1e-6)
    # A graph whose errors are all zero is fully explained.
    g2 = dataclasses.replace(g, rows=g.rows.clone())
    g2.rows[:, g2.error_start : g2.token_start] = 0
    s2 = graph_scores(g2)
    assert s2.replacement == pytest.approx(1.0) and s2.completeness == pytest.approx(1.0)


def _threshold_by_hand(scores, fraction):
    s = sorted(scores.tolist(), reverse=True)
    total, run = sum(s), 0.0
    for v in s:
        run += v
        if run / total >= fraction:
            return v
    return s[-1]


# The keys circuit-tracer's pydantic models (frontend/graph_models.py) define.
METADATA_KEYS = {
    "slug",
    "scan",
    "transcoder_list",
    "prompt_tokens",
    "prompt",
    "node_threshold",
    "schema_version",
}
QPARAMS_KEYS = {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
NODE_KEYS = {
    "node_id",
    "feature",
    "layer",
    "ctx_idx",
    "feature_type",
    "token_prob",
    "is_target_logit",
    "run_idx",
    "reverse_ctx_idx",
    "jsNodeId",
    "clerp",
    "influence",
    "activation",
}


def test_graph_json_format(setup):
    lm, tcs, g = setup
    pr = prune(g)
    d = json.loads(json.dumps(graph_json(g, pr, labels=lambda h, f: f"feat {h}:{f}")))
    assert METADATA_KEYS <= set(d["metadata"]) and QPARAMS_KEYS == set(d["qParams"])
    assert d["metadata"]["prompt_tokens"] == g.str_tokens
    ids = {n["node_id"] for n in d["nodes"]}
    for n in d["nodes"]:
        assert NODE_KEYS <= set(n)
        ft = n["feature_type"]
        if ft == "cross layer transcoder":
            L, f, p = map(int, n["node_id"].split("_"))
            assert n["layer"] == str(L) and n["ctx_idx"] == p and n["lmscope_feature"] == f
            assert n["clerp"] == f"feat blocks.{L}.mlp_in:{f}"
        elif ft == "mlp reconstruction error":
            assert n["node_id"].split("_")[1] == "-1" and n["feature"] == -1
        elif ft == "embedding":
            assert n["node_id"] == f"E_{g.tokens[n['ctx_idx']]}_{n['ctx_idx']}"
        else:
            assert ft == "logit" and n["layer"] == str(g.n_layers + 1)
    assert sum(n["is_target_logit"] for n in d["nodes"]) == 1
    # jsNodeId names a feature, not a (feature, position) node: circuit-tracer writes
    # "{layer}_{feature}-0" for every position, so the frontend groups one feature's nodes.
    # Error, embedding and logit nodes each keep their own.
    js = {}
    for n in d["nodes"]:
        key = (n["layer"], n["lmscope_feature"]) if n.get("lmscope_hook") else n["node_id"]
        js.setdefault(n["jsNodeId"], set()).add(key)
    assert all(len(keys) == 1 for keys in js.values()), js
    assert d["links"] and all(
        link["source"] in ids and link["target"] in ids for link in d["links"]
    )
    # Values, not only keys: every link is a kept edge with its direct effect, every node's
    # numbers are the graph's, and the scores are the ones graph_scores computes.
    index = {nid: i for i, nid in enumerate(node_ids_by_hand(g))}
    for link in d["links"]:
        t, s = index[link["target"]], index[link["source"]]
        assert pr.edge_mask[t, s] and pr.node_mask[t] and pr.node_mask[s]
        assert link["weight"] == pytest.approx(float(g.adjacency[t, s]), rel=1e-6, abs=1e-12)
    assert len(d["links"]) == int(
        (pr.edge_mask & pr.node_mask[:, None] & pr.node_mask[None, :]).sum()
    )
    for n in d["nodes"]:
        i = index[n["node_id"]]
        if n["feature_type"] == "cross layer transcoder":
            L, f = int(n["layer"]), n["lmscope_feature"]
            assert n["feature"] == (L + f) * (L + f + 1) // 2 + f  # Cantor pairing, by hand
            assert n["activation"] == pytest.approx(float(g.activations[i]))
            assert n["influence"] == pytest.approx(float(pr.cumulative[i]))
        elif n["feature_type"] == "logit":
            j = i - g.logit_start
            assert n["token_prob"] == pytest.approx(float(g.logit_probs[j]))
            assert n["is_target_logit"] == (j == 0) and n["feature"] == g.logit_tokens[j]
    meta = d["metadata"]["lmscope"]
    full, part = graph_scores(g), graph_scores(g, pr)
    assert meta["replacement_score"] == pytest.approx(full.replacement)
    assert meta["completeness_score"] == pytest.approx(full.completeness)
    assert meta["pruned_replacement_score"] == pytest.approx(part.replacement)
    assert meta["pruned_completeness_score"] == pytest.approx(part.completeness)
    assert meta["active_features"] == g.n_features and meta["unexpanded_features"] == 0
    assert meta["unexpanded_fraction"] == 0.0
    assert meta["circuit_tracer_scores"] == pytest.approx(circuit_tracer_scores(g))
    # Cumulative influence: the share of total influence held by the nodes at or above each rank.
    order = pr.influence.argsort(descending=True)
    total = float(pr.influence.sum())
    assert float(pr.cumulative[order[0]]) == pytest.approx(float(pr.influence[order[0]]) / total)
    assert float(pr.cumulative[order[-1]]) == pytest.approx(1.0)


def node_ids_by_hand(g):
    ids = [f"{L}_{f}_{p}" for L, p, f in g.features.tolist()]
    ids += [f"{L}_-1_{p}" for L in range(g.n_layers) for p in range(g.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(g.tokens)]
    return ids + [f"{g.n_layers + 1}_{t}_{g.n_pos - 1}" for t in g.logit_tokens]


def test_missing_transcoders_and_memory_refusal(setup):
    lm, tcs, g = setup
    with pytest.raises(UserError, match="missing layers 1"):
        check_transcoders(lm, {tc.cfg.hook_name: tc for L, tc in tcs.items() if L != 1})
    with pytest.raises(UserError, match=r"needs about [0-9.]+ GB"):
        build_graph(lm, tcs, PROMPT, max_memory_gb=1e-6)

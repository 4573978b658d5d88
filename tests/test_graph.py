"""Attribution graphs on tiny real models: the science (edges predict interventions) and the format."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.dictionaries import build, transcoder_config
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
from lmscope.trace.dictmath import decoder_rows, encoder_affine, skip_term
from lmscope.trace.frozen import frozen
from lmscope.trace.graph import feature_input, logit_input, logit_nodes

PROMPT = "the cat sat on the big red house"


def random_transcoders(lm, d_sae=64, k=4, skip_layers=(), arch="topk"):
    """Random sparse transcoders mlp_in -> mlp_out for every layer (nonzero biases, some skips)."""
    tcs = {}
    for L in range(lm.n_layers):
        tc = build(transcoder_config(L, lm.d_model, d_sae, arch=arch, k=k, seed=L, skip=L in skip_layers))
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
        no_err = rep.forward(1, errors={L: torch.zeros_like(st.error) for L, st in rep.layers.items()}).logits[0]
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
    assert (A[: g.n_features].abs().sum() > 0) and (A[g.logit_start:].abs().sum() > 0)


def test_edges_are_causal_and_layered(setup):
    lm, tcs, g = setup
    A = g.adjacency
    for t in range(g.n_features):
        Lt, pt, _ = g.features[t].tolist()
        for s in range(g.n_features):
            Ls, ps, _ = g.features[s].tolist()
            if Ls >= Lt or ps > pt:
                assert A[t, s] == 0
    assert A[:, g.logit_start:].abs().sum() == 0  # nothing reads a logit
    assert A[g.error_start:g.logit_start].abs().sum() == 0  # errors and tokens have no inputs


def test_batched_backward_equals_one_at_a_time(setup):
    lm, tcs, g = setup
    g1 = build_graph(lm, tcs, PROMPT, batch_size=1)
    assert torch.equal(g1.features, g.features)
    assert torch.allclose(g1.adjacency, g.adjacency, atol=1e-5 * float(g.adjacency.abs().max()))


def test_max_feature_nodes_keeps_the_most_influential(setup):
    lm, tcs, g = setup
    small = build_graph(lm, tcs, PROMPT, batch_size=4, max_feature_nodes=12)
    assert small.n_features == 12
    assert small.stats["active_features"] == g.n_features
    # The first batch visited is chosen by direct influence on the logits.
    full_ids = {tuple(r) for r in g.features.tolist()}
    assert {tuple(r) for r in small.features.tolist()} <= full_ids


def test_logit_nodes():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    assert logit_nodes(probs, None, desired_prob=0.75) == [0, 1]
    assert logit_nodes(probs, 3, desired_prob=0.75) == [3, 0, 1]
    assert len(logit_nodes(torch.full((100,), 0.01), None, max_logits=10)) == 10


def test_pruning_and_scores(setup):
    lm, tcs, g = setup
    pr = prune(g, 0.8, 0.98)
    assert pr.node_mask[g.token_start:].all()  # tokens and logits always kept
    assert 0 < int(pr.node_mask[: g.n_features].sum()) < g.n_features
    # Kept features carry the most influence: every dropped feature has less than the
    # least influential one kept by the node threshold.
    keep_all = prune(g, 1.0, 1.0)
    assert int(keep_all.node_mask.sum()) >= int(pr.node_mask.sum())
    full, part = graph_scores(g), graph_scores(g, pr)
    assert 0 <= part.replacement <= full.replacement <= 1
    assert 0 <= part.completeness <= full.completeness <= 1
    # A graph whose errors are all zero is fully explained.
    g2 = build_graph(lm, tcs, PROMPT, batch_size=16)
    g2.adjacency[:, g2.error_start:g2.token_start] = 0
    s2 = graph_scores(g2)
    assert s2.replacement == pytest.approx(1.0) and s2.completeness == pytest.approx(1.0)


# The keys circuit-tracer's pydantic models (frontend/graph_models.py) define.
METADATA_KEYS = {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"}
QPARAMS_KEYS = {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
NODE_KEYS = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
             "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}


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
    assert d["links"] and all(link["source"] in ids and link["target"] in ids for link in d["links"])
    assert 0 <= d["metadata"]["lmscope"]["replacement_score"] <= 1


def test_missing_transcoders_and_memory_refusal(setup):
    lm, tcs, g = setup
    with pytest.raises(UserError, match="missing layers 1"):
        check_transcoders(lm, {tc.cfg.hook_name: tc for L, tc in tcs.items() if L != 1})
    with pytest.raises(UserError, match=r"needs about [0-9.]+ GB"):
        build_graph(lm, tcs, PROMPT, max_memory_gb=1e-6)

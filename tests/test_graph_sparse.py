"""Long-prompt graph storage (issue 16 Must 5): the graph keeps only its non-zero rows, pruning
works on [rows x columns] without a square adjacency or edge mask, and the edges are computed
from (activation, decoder row) in each backward instead of from stored writes. Each is checked
against the dense version, written out by hand here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lmscope.trace.graph as graph_mod
from lmscope.models.tiny import tiny_model
from lmscope.trace import build_graph, graph_json, graph_scores, prune
from lmscope.trace.graph import Graph, _write_edges, _write_layout
from lmscope.trace.prune import PruneResult, circuit_tracer_scores

sys.path.insert(0, str(Path(__file__).parent))
from test_graph import random_transcoders  # noqa: E402

PROMPT = "the cat sat on the big red house and the dog ran home"


@pytest.fixture(scope="module")
def graph():
    """A graph with unexpanded features (12 feature nodes of ~200 active), so the fold matters."""
    lm = tiny_model("llama", n_layers=3)
    tcs = random_transcoders(lm, d_sae=64, k=6, skip_layers=(1,))
    return build_graph(lm, tcs, PROMPT, max_feature_nodes=12, batch_size=8)


def _threshold(s: torch.Tensor, fraction: float) -> float:
    v = sorted((x for x in s.flatten().tolist() if x > 0), reverse=True)
    total, run = sum(v), 0.0
    for x in v:
        run += x
        if run / total >= fraction:
            return x
    return v[-1]


def _influence(B: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    n = B.shape[0]
    return w @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - B.double()) - w.double()


def dense_prune(g: Graph, node_t: float = 0.8, edge_t: float = 0.98):
    """prune.py's algorithm on the square adjacency and a square edge mask (the dense path)."""
    A = g.adjacency.double()
    n, nf = g.n_nodes, g.n_features
    w = torch.zeros(n, dtype=torch.float64)
    w[g.logit_start :] = g.logit_probs.double()
    B = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-10)
    infl = _influence(B, w)
    node = infl >= _threshold(infl, node_t)
    node[g.token_start :] = True
    P = A * node[:, None] * node[None, :]
    Bp = P.abs() / P.abs().sum(1, keepdim=True).clamp_min(1e-10)
    ip = _influence(Bp, w)
    score = Bp * (ip + w)[:, None]
    edge = (score >= _threshold(score, edge_t)) & (score > 0)
    while True:
        before = node.clone()
        edge &= node[:, None] & node[None, :]
        node[: g.token_start] &= edge[:, : g.token_start].any(0)
        node[:nf] &= edge[:nf].any(1)
        if torch.equal(before, node):
            return node, edge


def test_graph_keeps_only_rows_that_can_be_non_zero(graph):
    g = graph
    assert g.stats["unexpanded_features"] > 0
    # Rows: the visited features and the logits, in node order; every other row is zero.
    want = list(range(g.n_features)) + list(range(g.logit_start, g.n_nodes))
    assert g.row_nodes.tolist() == want
    assert g.rows.shape == (len(want), g.n_nodes)
    A = g.adjacency
    others = torch.ones(g.n_nodes, dtype=torch.bool)
    others[g.row_nodes] = False
    assert A[others].abs().sum() == 0 and torch.equal(A[g.row_nodes], g.rows)
    U = g.unexpanded
    assert U.shape == (g.n_nodes, g.n_errors) and U.abs().sum() > 0
    assert torch.equal(U[g.row_nodes], g.unexpanded_rows)


def test_row_pruning_equals_the_dense_path(graph):
    """Same kept nodes and edges as the square-matrix algorithm, scores to float precision."""
    g = graph
    pr = prune(g)
    node, edge = dense_prune(g)
    assert torch.equal(pr.node_mask, node)
    assert 0 < int(node[: g.n_features].sum()) < g.n_features  # a real pruning, not all or none
    assert torch.equal(pr.edge_mask, edge)
    # Scores against the dense computation by hand (inverse, not the series).
    A = g.adjacency.double()
    w = torch.zeros(g.n_nodes, dtype=torch.float64)
    w[g.logit_start :] = g.logit_probs.double()
    err = slice(g.error_start, g.token_start)

    def by_hand(M):
        B = M.abs() / M.abs().sum(1, keepdim=True).clamp_min(1e-10)
        infl = _influence(B, w)
        tok, er = infl[g.token_start : g.logit_start].sum(), infl[err].sum()
        weight = infl + w
        comp = ((1 - B[:, err].sum(1)) * weight).sum() / weight.sum()
        return float(tok / (tok + er)), float(comp)

    assert tuple(graph_scores(g)) == pytest.approx(by_hand(A), abs=1e-6)
    # Pruned: fold the dropped features into their (layer, pos) error node, zero the rest.
    M = A.clone()
    for i in range(g.n_features):
        if not node[i]:
            L, p, _ = g.features[i].tolist()
            M[:, g.error_index(L, p)] += M[:, i]
            M[i], M[:, i] = 0, 0
    rest = ~node
    rest[: g.n_features] = False
    M[rest], M[:, rest] = 0, 0
    assert tuple(graph_scores(g, pr)) == pytest.approx(by_hand(M * edge), abs=1e-6)
    # circuit-tracer's way: the unexpanded part taken out, pruned graph zeroed, not folded.
    C = g.adjacency_as_circuit_tracer().double()
    node_c, edge_c = dense_prune(
        Graph.from_adjacency(
            adjacency=C.float(),
            **{k: getattr(g, k) for k in ("prompt", "tokens", "str_tokens", "n_layers")},
            **{k: getattr(g, k) for k in ("features", "activations", "logit_tokens")},
            **{k: getattr(g, k) for k in ("logit_strs", "logit_probs")},
        )
    )
    ct = circuit_tracer_scores(g)
    assert (ct["replacement_score"], ct["completeness_score"]) == pytest.approx(
        by_hand(C), abs=1e-6
    )
    Cp = C * node_c[:, None] * node_c[None, :] * edge_c
    assert (ct["pruned_replacement_score"], ct["pruned_completeness_score"]) == pytest.approx(
        by_hand(Cp), abs=1e-6
    )


def test_no_square_matrix_on_the_way_to_the_json(graph, monkeypatch):
    """Build, prune, scores and JSON never build the n_nodes x n_nodes adjacency or edge mask
    (at 1,024 tokens on SmolLM2 those are 3.9 GB and 1.0 GB)."""

    def refuse(self):
        raise AssertionError("a square matrix was built")

    lm = tiny_model("llama", n_layers=2)
    tcs = random_transcoders(lm, d_sae=64, k=6)
    monkeypatch.setattr(Graph, "adjacency", property(refuse))
    monkeypatch.setattr(Graph, "unexpanded", property(refuse))
    monkeypatch.setattr(Graph, "adjacency_as_circuit_tracer", refuse)
    monkeypatch.setattr(PruneResult, "edge_mask", property(refuse))
    g = build_graph(lm, tcs, PROMPT, max_feature_nodes=10, batch_size=8)
    pr = prune(g)
    out = graph_json(g, pr)
    assert out["links"] and graph_scores(g, pr).replacement >= 0
    monkeypatch.undo()
    # The JSON's links are exactly the kept edges of the dense mask, with the adjacency's weights.
    kept = pr.edge_mask & pr.node_mask[:, None] & pr.node_mask[None, :]
    assert len(out["links"]) == int(kept.sum())


@pytest.mark.parametrize("targets", [1, 3])
def test_edges_from_activation_and_decoder_equal_the_stored_writes(targets, monkeypatch):
    """_write_edges (a_f <g, dec_f>, decoder rows gathered per chunk of positions) against the
    old stored writes w_f = a_f * dec_f and block = g[:, p] @ w^T, by hand, with positions of
    different feature counts (padding) and chunks of one and two positions; targets > 1 is a
    CLT feature writing to several MLP outputs (the gradients concatenated)."""
    gen = torch.Generator().manual_seed(0)
    n, n_pos, d, d_sae = 5, 6, 8, 20
    feats = torch.tensor(
        [[0, p, f] for p, fs in [(1, [3, 7]), (2, [0]), (4, [1, 2, 19]), (5, [5])] for f in fs]
    )
    vals = torch.rand(feats.shape[0], generator=gen) + 0.5
    cols = torch.arange(feats.shape[0]) + 3  # the layer's columns in the block
    grads = [torch.randn(n, n_pos, d, generator=gen) for _ in range(targets)]
    dec = torch.randn(d_sae, targets * d, generator=gen)
    ref = torch.zeros(n, 20)
    for j, (_, p, f) in enumerate(feats.tolist()):
        write = vals[j] * dec[f]  # what the old code stored per active feature
        g = torch.cat([gr[:, p] for gr in grads], -1)
        ref[:, cols[j]] = g @ write
    lay = _write_layout(feats, vals, cols)
    assert lay.feature.shape == (4, 3) and int((lay.col >= 0).sum()) == feats.shape[0]
    for gather in (2**23, 3 * targets * d):  # one chunk; chunks of one position
        monkeypatch.setattr(graph_mod, "GATHER_FLOATS", gather)
        block = torch.zeros(n, 20)
        _write_edges(block, grads, dec, lay)
        assert torch.allclose(block, ref, atol=1e-5)
        assert block[:, :3].abs().sum() == 0 and block[:, 3 + feats.shape[0] :].abs().sum() == 0

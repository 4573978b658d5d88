"""Influence, pruning, and the replacement / completeness scores of an attribution graph.

Ameisen et al. 2025 (Sec. 3.3 and App. "Graph pruning"), as circuit-tracer implements it:

- Normalize: B = |A| with each row divided by its sum, so B[t, s] is the fraction of
  t's (absolute) direct input that comes from s.
- Influence on the logits: I = w (B + B^2 + B^3 + ...), w = the logit nodes'
  probabilities; the series ends because the graph is acyclic (B is nilpotent in
  node order), so it is summed by repeated products until it vanishes.
- Node pruning: keep the nodes whose influence makes up `node_threshold` (0.8) of the
  total, sorted by influence (tokens and logits are always kept).
- Edge pruning: on the node-pruned graph, score edge (t, s) = B[t, s] x (influence of t
  + its logit weight), keep edges making up `edge_threshold` (0.98) of the total, then
  drop features / errors left without outgoing edges and features without incoming ones.
- Replacement score: the share of the token-to-logit influence that does not end in an
  error node, tokens / (tokens + errors). Completeness score: the influence-weighted mean,
  over nodes, of the share of a node's input that does not come from error nodes
  (circuit-tracer's `compute_graph_scores`).
- Pruned scores: what the pruned graph leaves out is unexplained. Every feature outside it
  is folded into the error node of its (layer, position): its column (outgoing direct
  effects, signed) is added to that error node's column and its row and column are zeroed,
  so influence that flowed through it counts once, as error, and no longer reaches the
  tokens behind it. Then the pruned error nodes are zeroed and the edge mask applied, and
  the same two scores are computed: circuit-tracer's subgraph scoring (its PR #42
  `compute_subgraph_scores`) with the pruned graph's features as the pinned subgraph and
  every other feature eligible for folding.

Memory: only the rows of visited features and logits are non-zero (errors and tokens have no
inputs), and the Graph stores only those (`graph.rows` [r, n_nodes], `graph.row_nodes`), so
every function here works on them and the edge mask is kept as rows too: nothing n_nodes x
n_nodes is made. At 1,024 tokens on SmolLM2 with 512 feature nodes that is 513 rows of 32,257
columns instead of 32,257^2 (3.9 GB per float copy, 1.0 GB per bool mask).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PruneResult(NamedTuple):
    node_mask: Tensor
    """bool [n_nodes] nodes kept."""
    edge_rows: Tensor
    """bool [r, n_nodes] edges kept, rows of the edge mask at `row_nodes` (rows = targets; every
    other row has no edges)."""
    row_nodes: Tensor
    """[r] the target node of each row of `edge_rows` (the graph's `row_nodes`)."""
    cumulative: Tensor
    """[n_nodes] cumulative share of influence at each node's rank (what circuit-tracer calls
    influence)."""
    influence: Tensor
    """[n_nodes] each node's influence on the logits (unpruned graph)."""

    @property
    def edge_mask(self) -> Tensor:
        """bool [n_nodes, n_nodes] the edges kept (a dense copy: n_nodes^2 bytes)."""
        n = self.node_mask.shape[0]
        M = torch.zeros(n, n, dtype=torch.bool)
        M[self.row_nodes] = self.edge_rows
        return M

    @classmethod
    def from_dense(cls, node_mask, edge_mask, cumulative, influence) -> PruneResult:
        """From a square edge mask: its non-empty rows are kept."""
        R = edge_mask.any(1).nonzero(as_tuple=True)[0]
        return cls(node_mask, edge_mask[R].clone(), R, cumulative, influence)

    def edge_rows_at(self, R: Tensor) -> Tensor:
        """bool [len(R), n_nodes] the edge mask's rows R."""
        if torch.equal(self.row_nodes, R):
            return self.edge_rows
        where = torch.full((self.node_mask.shape[0],), -1, dtype=torch.long)
        where[self.row_nodes] = torch.arange(self.row_nodes.numel())
        j = where[R]
        out = torch.zeros(R.numel(), self.node_mask.shape[0], dtype=torch.bool)
        out[j >= 0] = self.edge_rows[j[j >= 0]]
        return out


class GraphScores(NamedTuple):
    replacement: float
    completeness: float


def normalize_rows(A: Tensor) -> Tensor:
    """|A| with rows summing to 1 (rows of zeros stay zero)."""
    B = A.abs()
    return B.div_(B.sum(1, keepdim=True).clamp_min(1e-10))


def nonzero_rows(A: Tensor) -> Tensor:
    """[r] indices of the rows of A with a non-zero entry (the nodes that have inputs)."""
    return A.any(1).nonzero(as_tuple=True)[0]


def influence(B: Tensor, w: Tensor, max_iter: int = 10_000) -> Tensor:
    """w (B + B^2 + ...) for a nilpotent row-normalized B [n, n] and logit weights w [n]."""
    rows = nonzero_rows(B)
    return partial_influence(B[rows], rows, w, max_iter, normalized=True)


def partial_influence(
    rows: Tensor, row_ids: Tensor, w: Tensor, max_iter: int = 10_000, *, normalized: bool = False
) -> Tensor:
    """`influence` when only some rows of A are non-zero: rows [r, n] = A[row_ids].

    Each step costs r x n instead of n^2 (circuit-tracer does the same while it builds a
    graph). `normalized`: rows are already B's rows (row-normalized |A|).
    """
    B = rows if normalized else normalize_rows(rows)  # [r, n]
    cur = w[row_ids] @ B
    total = cur.clone()
    for _ in range(max_iter):
        cur = cur[row_ids] @ B
        if not bool(cur.any()) or float(cur.abs().max()) < 1e-30:
            return total
        total += cur
    raise RuntimeError("influence did not converge: the graph has a cycle")


def node_influence(A: Tensor, w: Tensor) -> Tensor:
    rows = nonzero_rows(A)
    return partial_influence(A[rows], rows, w)


def _threshold(scores: Tensor, fraction: float) -> Tensor:
    """The smallest score among the top scores that make up `fraction` of the total.

    Zeros never count towards the total, so only the positive scores are sorted (the same
    threshold, without sorting every zero of a sparse score matrix)."""
    s = scores[scores > 0].sort(descending=True).values
    if s.numel() == 0:
        return scores.new_tensor(float("inf"))
    total = s.sum()
    cum = s.cumsum(0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype))), len(s) - 1)
    return s[i]


def logit_weights(graph) -> Tensor:
    w = torch.zeros(graph.n_nodes)
    w[graph.logit_start :] = graph.logit_probs
    return w


def prune(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Masks of the nodes and edges that carry the given fractions of influence on the logits."""
    return _prune(graph, graph.row_nodes, graph.rows.clone(), node_threshold, edge_threshold)


def _prune(
    graph, R: Tensor, P: Tensor, node_threshold: float, edge_threshold: float
) -> PruneResult:
    """`prune` on the rows P [r, n] = A[R] that hold every non-zero of A (P is overwritten)."""
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise ValueError("node_threshold and edge_threshold must be in [0, 1]")
    w = logit_weights(graph)
    n_fixed = graph.n_nodes - graph.token_start  # tokens + logits: always kept
    infl = partial_influence(P, R, w)
    node_mask = infl >= _threshold(infl, node_threshold)
    node_mask[graph.token_start :] = True
    P[~node_mask[R]] = 0
    P[:, ~node_mask] = 0
    Bp = normalize_rows(P)
    del P
    ip = partial_influence(Bp, R, w, normalized=True)
    edge_score = Bp.mul_((ip + w)[R][:, None])  # [r, n], in place of Bp
    keep = (edge_score >= _threshold(edge_score, edge_threshold)) & (edge_score > 0)  # [r, n]
    del edge_score, Bp
    nf = graph.n_features
    n_src = graph.n_nodes - n_fixed  # features and errors: the nodes that can dangle
    feat_row = R < nf
    while True:  # drop dangling nodes until nothing changes (at most n_layers + 1 rounds)
        before = node_mask.clone()
        keep[~node_mask[R]] = False
        keep[:, ~node_mask] = False
        node_mask[:n_src] &= keep[:, :n_src].any(0)  # an outgoing edge
        has_in = torch.zeros(nf, dtype=torch.bool)
        has_in[R[feat_row]] = keep[feat_row].any(1)
        node_mask[:nf] &= has_in  # and an incoming one
        if torch.equal(before, node_mask):
            break
    order = infl.sort(descending=True)
    cum = torch.zeros_like(infl)
    cum[order.indices] = order.values.cumsum(0) / order.values.sum().clamp_min(1e-30)
    return PruneResult(node_mask, keep, R, cum, infl)


def scores(A: Tensor, w: Tensor, is_error: Tensor, is_token: Tensor) -> GraphScores:
    """Replacement and completeness of adjacency A [n, n] (rows = targets), logit weights w [n].

    replacement = I(tokens) / (I(tokens) + I(errors)), I = w (B + B^2 + ...);
    completeness = sum_t (1 - sum_{s error} B[t, s]) (I_t + w_t) / sum_t (I_t + w_t).
    """
    R = nonzero_rows(A)
    return _scores_rows(A[R], R, w, is_error, is_token)


def _scores_rows(
    rows: Tensor, R: Tensor, w: Tensor, is_error: Tensor, is_token: Tensor
) -> GraphScores:
    """`scores` from the non-zero rows [r, n] = A[R] (every other row of A is zero)."""
    B = normalize_rows(rows)
    infl = partial_influence(B, R, w, normalized=True)
    tok = infl[is_token].sum()
    err = infl[is_error].sum()
    replacement_score = float(tok / (tok + err).clamp_min(1e-30))
    non_err = torch.ones_like(w)  # a node without inputs has no error input
    non_err[R] = 1 - B[:, is_error].sum(1)
    weight = infl + w
    completeness_score = float((non_err * weight).sum() / weight.sum().clamp_min(1e-30))
    return GraphScores(replacement_score, completeness_score)


def _kinds(graph) -> tuple[Tensor, Tensor]:
    is_err = torch.zeros(graph.n_nodes, dtype=torch.bool)
    is_err[graph.error_start : graph.token_start] = True
    is_tok = torch.zeros(graph.n_nodes, dtype=torch.bool)
    is_tok[graph.token_start : graph.logit_start] = True
    return is_err, is_tok


def fold_into_errors(graph, A: Tensor, drop: Tensor) -> Tensor:
    """A copy of A where the features with drop[i] (bool [n_features]) become error.

    Each dropped feature's column (what it writes into its targets, signed) is added to
    the column of the error node at its (layer, position), then its row and column are
    zeroed: its direct effects stay in the graph, as unexplained input, and its own
    inputs no longer carry influence back to the tokens.
    """
    M = torch.zeros_like(A)
    R = nonzero_rows(A)
    M[R] = _fold_rows(graph, R, A[R], drop)
    return M


def _fold_rows(graph, R: Tensor, M: Tensor, drop: Tensor) -> Tensor:
    """`fold_into_errors` on the rows M [r, n] = A[R] that hold every non-zero of A (M is
    overwritten and returned)."""
    idx = drop.nonzero(as_tuple=True)[0]
    if idx.numel():
        L, p = graph.features[idx, 0], graph.features[idx, 1]
        err = graph.error_start + L * graph.n_pos + p
        M.index_add_(1, err, M[:, idx])
        M[:, idx] = 0
        dropped_row = torch.zeros(graph.n_nodes, dtype=torch.bool)
        dropped_row[idx] = True
        M[dropped_row[R]] = 0
    return M


def _pruned_rows(graph, mask: PruneResult) -> tuple[Tensor, Tensor]:
    """`pruned_adjacency` on the graph's rows only: (R, [r, n])."""
    nf = graph.n_features
    R = graph.row_nodes
    M = _fold_rows(graph, R, graph.rows.clone(), ~mask.node_mask[:nf])
    rest = ~mask.node_mask
    rest[:nf] = False  # the features are handled by the fold
    M[rest[R]] = 0
    M[:, rest] = 0
    return R, M.mul_(mask.edge_rows_at(R))


def pruned_adjacency(graph, mask: PruneResult) -> Tensor:
    """The adjacency the pruned scores are computed on (see the module docstring); dense."""
    R, MR = _pruned_rows(graph, mask)
    M = torch.zeros(graph.n_nodes, graph.n_nodes)
    M[R] = MR
    return M


def graph_scores(graph, mask: PruneResult | None = None) -> GraphScores:
    """Replacement and completeness scores of the graph (of its pruned part, given a mask).

    Full graph: circuit-tracer's `compute_graph_scores` on the adjacency, whose error nodes
    already hold the active features that were not expanded (graph.py). Pruned graph: the
    features outside it are folded into their error nodes, pruned errors and edges are
    zeroed (`pruned_adjacency`), and the same scores are computed on that.
    """
    is_err, is_tok = _kinds(graph)
    if mask is None:
        return _scores_rows(graph.rows, graph.row_nodes, logit_weights(graph), is_err, is_tok)
    R, MR = _pruned_rows(graph, mask)
    return _scores_rows(MR, R, logit_weights(graph), is_err, is_tok)


def circuit_tracer_scores(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """The four scores as circuit-tracer's published figures are computed, for comparisons.

    Full: `compute_graph_scores` on the adjacency without the unexpanded active features
    (circuit-tracer drops their columns instead of folding them into errors). Pruned: the
    same function on that adjacency pruned by `prune_graph` and zeroed outside the kept
    nodes and edges (what its notebook reports as "pruned graph" scores, e.g. 0.55 / 0.85
    for Gemma-2-2B on the Dallas-Austin prompt): dropped features simply vanish and the
    remaining inputs are renormalized, so these are higher than lmscope's pruned scores.
    """
    R = graph.row_nodes
    P = graph.rows_as_circuit_tracer()  # the rows of adjacency_as_circuit_tracer()
    is_err, is_tok = _kinds(graph)
    w = logit_weights(graph)
    full = _scores_rows(P, R, w, is_err, is_tok)
    pr = _prune(graph, R, P.clone(), node_threshold, edge_threshold)
    P.mul_(pr.node_mask[R][:, None] & pr.node_mask[None, :] & pr.edge_rows)
    part = _scores_rows(P, R, w, is_err, is_tok)
    return {
        "replacement_score": full.replacement,
        "completeness_score": full.completeness,
        "pruned_replacement_score": part.replacement,
        "pruned_completeness_score": part.completeness,
    }

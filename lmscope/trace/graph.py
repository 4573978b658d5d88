"""Attribution graphs: direct linear effects between features, errors, tokens and logits.

In the replacement model (replacement.py) the input of every feature's encoder and of
every logit is linear in what each layer writes, so the direct effect of source node s
on target node t is

    A[t, s] = <d input_t / d residual at s's write point, value s writes>

where "value s writes" is a_s * W_dec[s] for a feature, the error vector for an error
node and the embedding for a token; input_t is the encoder pre-activation of a feature
(gradient injected: the encoder column at mlp_in) or a de-meaned logit (gradient
injected: W_U[t] - mean_v W_U[v] at ln_final, last position; with Gemma 2's final-logit
soft-cap each row is scaled by the cap's slope at the prompt, lmscope.models.logits).
Ameisen et al. 2025 Sec. 3; circuit-tracer computes it the same way.

Cost: one forward of the prompt with the graph kept, then one backward per batch of
`batch_size` target nodes, vmapped over their injected gradients (is_grads_batched,
retain_graph); the MLPs carry no gradient, so a backward only goes through the attention
OV paths, the frozen norms and the residual stream.

Node order (as circuit-tracer's, so the JSON maps 1:1): [features..., errors (layer-major,
then position), tokens, logits]. Rows of A are targets, columns sources.

Memory (memory.py): the rows are filled in batches of target nodes (chunked backward
passes); a row stores either every active feature's edge or, when that does not fit, only its
`row_edges` largest |edges| -- the rest of the row's feature input is added to the error node
of each dropped edge's (layer, position), exactly as for unexpanded features below, and the
row's total |input| is kept, so every node's input is still the sum of its edges and the
normalization used for influence is unchanged; a dropped edge of a feature that is later
expanded counts as error. Nothing grows with n_active x d_model or n_nodes^2: an edge from a
feature is a_f <gradient, decoder row f>, computed from the activation and the decoder in each
backward (the writes a_f W_dec[f] are not stored), and the Graph keeps only its non-zero rows
(visited features and logits; errors and tokens have no inputs), which prune.py works on.

Active features that are not expanded (over `max_feature_nodes`) have no node, but their
direct effects on the expanded nodes are known (every backward reads every active
feature). They are added to the error node of their (layer, position): an error node is
everything at that layer and position that the graph's features do not explain, so the
graph stays an exact account of the replacement model (every input is the sum of its
edges plus biases) and the scores count the left-out features as unexplained.
circuit-tracer drops them instead (counted neither as feature nor as error), which
raises both scores; `Graph.adjacency_as_circuit_tracer` gives that version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

from ..models.logits import demeaned_logit_directions
from .memory import (
    CHUNK_ENTRIES,
    GATHER_FLOATS,
    GB,
    MemoryEstimate,
    default_limit_gb,
    estimate_memory,
    plan_memory,
)
from .replacement import Replacement, check_clt, is_clt, replacement

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..dictionaries.clt import CrossLayerTranscoder
    from ..models import LanguageModel


@dataclass
class Graph:
    """An attribution graph on one prompt (unpruned).

    Only visited features and logits have inputs (errors and tokens are sources only), so the
    adjacency is stored as its non-zero rows: `rows` [r, n_nodes] = A[row_nodes]. At 1,024
    tokens on SmolLM2 that is 513 x 32,257 floats instead of 32,257^2 (3.9 GB). `adjacency`
    builds the square matrix on demand (small graphs, tests, comparisons).
    """

    prompt: str
    tokens: list[int]
    str_tokens: list[str]
    n_layers: int
    features: Tensor
    """[n_features, 3] int64 (layer, pos, feature id) of the feature nodes."""
    activations: Tensor
    """[n_features] their activations."""
    logit_tokens: list[int]
    logit_strs: list[str]
    logit_probs: Tensor
    """[n_logits] the model's probabilities of the logit nodes (first = the target)."""
    rows: Tensor
    """[r, n_nodes] the rows of the adjacency that can be non-zero (direct effects, rows =
    targets, columns = sources); every other row is zero."""
    row_nodes: Tensor
    """[r] int64, ascending: the node of each row of `rows`."""
    model: str = ""
    hooks: list[str] = field(default_factory=list)
    """The transcoders' input hooks (the 'scan')."""
    stats: dict = field(default_factory=dict)
    """seconds, peak bytes, active features, backward batches."""
    unexpanded_rows: Tensor | None = None
    """[r, n_errors] the part of the error columns of `rows` that comes from active features
    left out of the graph, and (with `row_edges`) from the feature edges a row did not store
    (None or zeros when every one was expanded and stored)."""

    @classmethod
    def from_adjacency(cls, *, adjacency: Tensor, unexpanded: Tensor | None = None, **kw) -> Graph:
        """A graph from a square adjacency [n_nodes, n_nodes] (and its [n_nodes, n_errors]
        unexpanded part): its non-zero rows are kept."""
        R = adjacency.any(1).nonzero(as_tuple=True)[0]
        return cls(
            rows=adjacency[R].clone(),
            row_nodes=R,
            unexpanded_rows=None if unexpanded is None else unexpanded[R].clone(),
            **kw,
        )

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + len(self.logit_tokens)

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    @property
    def adjacency(self) -> Tensor:
        """[n_nodes, n_nodes] direct effects, rows = targets (a new dense copy: n_nodes^2
        floats; prune.py and graph_json.py work on `rows` instead)."""
        A = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.rows.dtype)
        A[self.row_nodes] = self.rows
        return A

    @property
    def unexpanded(self) -> Tensor | None:
        """[n_nodes, n_errors] `unexpanded_rows` as a dense matrix (None if not recorded)."""
        if self.unexpanded_rows is None:
            return None
        U = torch.zeros(self.n_nodes, self.n_errors, dtype=self.unexpanded_rows.dtype)
        U[self.row_nodes] = self.unexpanded_rows
        return U

    def rows_as_circuit_tracer(self) -> Tensor:
        """`rows` without the unexpanded features' effects in the error columns (a copy)."""
        P = self.rows.clone()
        if self.unexpanded_rows is not None:
            P[:, self.error_start : self.token_start] -= self.unexpanded_rows
        return P

    def adjacency_as_circuit_tracer(self) -> Tensor:
        """The adjacency without the unexpanded features' effects in the error columns.

        circuit-tracer drops the columns of the active features it does not expand, so
        their direct effects count neither as feature nor as error input; lmscope folds
        them into the error nodes. This undoes the fold, for comparisons with its figures.
        """
        A = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.rows.dtype)
        A[self.row_nodes] = self.rows_as_circuit_tracer()
        return A


def logit_nodes(
    probs: Tensor, target: int | None, *, max_logits: int = 10, desired_prob: float = 0.95
) -> list[int]:
    """Top tokens until cumulative probability `desired_prob`, at most `max_logits`; target
    first."""
    p, idx = probs.sort(descending=True)
    n = int((p.cumsum(0) < desired_prob).sum().item()) + 1
    ids = idx[: min(n, max_logits)].tolist()
    if target is not None:
        ids = [target] + [i for i in ids if i != target][: max_logits - 1]
    return ids


def build_graph(
    lm: LanguageModel,
    transcoders: dict[int, SparseDictionary] | CrossLayerTranscoder,
    prompt: str,
    *,
    target: str | int | None = None,
    max_feature_nodes: int = 4096,
    batch_size: int = 64,
    max_logits: int = 10,
    desired_prob: float = 0.95,
    max_memory_gb: float | None = None,
    row_edges: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Graph:
    """The attribution graph of `prompt` through per-layer transcoders {layer: dictionary} or
    one cross-layer transcoder (a CrossLayerTranscoder over every layer).

    target: a token string/id to put first among the logit nodes (default: the top token).
    Features are visited in order of their current influence on the logits (as in
    circuit-tracer) until `max_feature_nodes`; the rest get no node and their direct
    effects go into the error nodes (stats: unexpanded_features, unexpanded_fraction).

    Memory (memory.py): the estimate for this prompt is made before anything runs and again
    once the active features are counted; when it exceeds `max_memory_gb` (default: 80% of
    the available RAM) the backward batch is lowered, then only the `row_edges` largest
    feature edges of each row are stored (the rest of each row goes to its error nodes, as
    unexpanded features do), else UserError. `row_edges` set by the caller is used as is.
    `log` receives the estimate line.
    """
    from .attribution import resolve_target

    t0 = time.perf_counter()
    tokens = lm.to_tokens(prompt)
    target_id = None if target is None else resolve_target(lm, target)
    limit = (default_limit_gb() if max_memory_gb is None else max_memory_gb) * GB
    n_pos = tokens.shape[1]

    clt = is_clt(transcoders)
    if clt:
        check_clt(lm, transcoders)
        modules = [transcoders]
        d_sae = transcoders.cfg.d_sae
        k_per_token = (transcoders.cfg.k if transcoders.cfg.arch == "topk" else 64) * lm.n_layers
        hooks = transcoders.cfg.hooks_in
    else:
        modules = list(transcoders.values())
        d_sae = max(tc.cfg.d_sae for tc in modules)
        k_per_token = sum(getattr(tc.cfg, "k", None) or 64 for tc in modules)
        hooks = [transcoders[L].cfg.hook_name for L in sorted(transcoders)]
    dict_bytes = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())

    def planner(n_active: int):
        def est(b: int, k: int | None) -> MemoryEstimate:
            return estimate_memory(
                lm,
                n_pos,
                n_active,
                d_sae=d_sae,
                dictionary_bytes=dict_bytes,
                batch_size=b,
                max_feature_nodes=max_feature_nodes,
                n_logits=max_logits,
                row_edges=k,
                write_targets=(lm.n_layers + 1) / 2 if clt else 1.0,
            )

        return plan_memory(
            est,
            limit,
            batch_size=batch_size,
            row_edges=row_edges,
            fixed_edges=row_edges is not None,
        )

    # The active-feature count is known only after the clean pass; bound it by k per token
    # (exact for TopK) so that an impossible graph is refused before anything runs.
    k_bound = k_per_token * n_pos
    planner(k_bound)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with replacement(lm, transcoders, tokens) as rep:
        n_active = sum(int((st.acts != 0).sum()) for st in rep.layers.values())
        plan = planner(n_active)
        if log is not None:
            log(plan.describe())
        g = _attribute(
            rep,
            prompt,
            target_id,
            max_feature_nodes=max_feature_nodes,
            batch_size=plan.batch_size,
            select_size=batch_size,
            row_edges=plan.row_edges,
            max_logits=max_logits,
            desired_prob=desired_prob,
            progress=progress,
        )
    g.model = lm.name
    g.hooks = hooks
    g.stats["dictionary"] = "clt" if clt else "per-layer transcoders"
    g.stats["seconds"] = time.perf_counter() - t0
    g.stats["estimated_bytes"] = plan.total
    g.stats["estimated_new_bytes"] = plan.new
    return g


def _feature_influence(
    edges: Tensor | tuple[Tensor, Tensor],
    den: Tensor,
    w_rows: Tensor,
    row_feature: Tensor,
    n_active: int,
    max_iter: int = 10_000,
) -> Tensor:
    """[n_active] influence of every active feature on the logits from the rows filled so far.

    prune.partial_influence restricted to the feature columns, computed in two steps: the
    series w (B + B^2 + ...) only propagates through the columns of features that have rows,
    so it is summed on that small [rows, feature rows] block, V = sum_k v_k; then one product
    V B gives every active feature's influence. edges: the filled rows' feature edges, dense
    [r, n_active] or (values [r, K], columns [r, K]) for stored top edges; den [r] the rows'
    total |input| over every column (dropped edges included: the dense path's normalization);
    w_rows [r] the rows' logit weights; row_feature [r] the active-feature index of each row
    (-1 for logit rows). |edges| is taken chunk by chunk, never copied whole.
    """
    r = den.shape[0]
    inv = 1.0 / den.clamp_min(1e-10)
    is_feat = row_feature >= 0
    fidx = row_feature[is_feat]
    dense = isinstance(edges, Tensor)
    width = edges.shape[1] if dense else edges[0].shape[1]
    step = max(1, CHUNK_ENTRIES // max(width, 1))
    # M[r, j] = B[r, fidx[j]]: the block the series runs on.
    if dense:
        M = edges[:, fidx].abs() * inv[:, None]
    else:
        vals, cols = edges
        slot = torch.full((n_active,), -1, dtype=torch.long)
        slot[fidx] = torch.arange(fidx.numel())
        M = torch.zeros(r, fidx.numel())
        for c in range(0, r, step):
            j = slot[cols[c : c + step].long()]  # [chunk, K]
            hit = (j >= 0).nonzero(as_tuple=True)
            M[hit[0] + c, j[hit]] = vals[c : c + step][hit].abs() * inv[hit[0] + c]
    v = w_rows.clone()
    V = torch.zeros_like(w_rows)
    for _ in range(max_iter):
        V += v
        nxt = torch.zeros_like(w_rows)
        nxt[is_feat] = v @ M
        if not bool(nxt.any()) or float(nxt.abs().max()) < 1e-30:
            break
        v = nxt
    else:
        raise RuntimeError("influence did not converge: the graph has a cycle")
    u = V * inv
    total = torch.zeros(n_active)
    for c in range(0, r, step):
        if dense:
            total += u[c : c + step] @ edges[c : c + step].abs()
        else:
            cc = cols[c : c + step].long().reshape(-1)
            total.index_add_(0, cc, (u[c : c + step, None] * vals[c : c + step].abs()).reshape(-1))
    return total


@dataclass(frozen=True)
class _WriteLayout:
    """One layer's active features, padded to [positions with features, most per position]."""

    pos: Tensor
    """[m] the positions that have active features."""
    feature: Tensor
    """[m, k] feature ids (0 in padding)."""
    act: Tensor
    """[m, k] float32 activations (0 in padding, so padding writes nothing)."""
    col: Tensor
    """[m, k] the active-feature column of each (-1 in padding)."""


def _write_layout(feats: Tensor, vals: Tensor, cols: Tensor) -> _WriteLayout:
    """feats [N, 3] (layer, pos, feature) sorted by position, vals [N], cols [N] -> layout."""
    if feats.shape[0] == 0:
        z = torch.zeros(0, 0, dtype=torch.long)
        return _WriteLayout(torch.zeros(0, dtype=torch.long), z, z.float(), z)
    pos, counts = feats[:, 1].unique_consecutive(return_counts=True)
    m, k = int(pos.numel()), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(feats.shape[0]) - torch.repeat_interleave(starts, counts)
    row = torch.repeat_interleave(torch.arange(m), counts)
    feature = torch.zeros(m, k, dtype=torch.long)
    act = torch.zeros(m, k)
    col = torch.full((m, k), -1, dtype=torch.long)
    feature[row, slot] = feats[:, 2]
    act[row, slot] = vals.float()
    col[row, slot] = cols
    return _WriteLayout(pos, feature, act, col)


def _write_edges(block: Tensor, grads: list[Tensor], dec: Tensor, lay: _WriteLayout) -> None:
    """block[:, col] = a_f <g, dec_f> for every active feature of one layer (in place).

    grads: [n, pos, d_model] d targets / d write at each MLP output the features write to (one
    for a per-layer transcoder; for a CLT feature of layer l, layers l, l+1, ...); dec: [d_sae,
    len(grads) * d_model] raw decoder rows (into those outputs, concatenated). The decoder rows
    and gradients are gathered a chunk of positions at a time: per chunk one batched product
    [chunk, n, width] x [chunk, width, k].
    """
    m, k = lay.feature.shape
    if m == 0:
        return
    n, width = block.shape[0], dec.shape[1]
    step = max(1, GATHER_FLOATS // max(1, max(k, n) * width))
    for c in range(0, m, step):
        ps = lay.pos[c : c + step]
        g = torch.cat([gr[:, ps] for gr in grads], -1) if len(grads) > 1 else grads[0][:, ps]
        d_ = dec[lay.feature[c : c + step]].float()  # [chunk, k, width]
        e = torch.bmm(g.float().transpose(0, 1), d_.transpose(1, 2))  # [chunk, n, k]
        e.mul_(lay.act[c : c + step, None, :])
        cc = lay.col[c : c + step]
        keep = cc >= 0
        block[:, cc[keep]] = e.transpose(0, 1)[:, keep]


def _attribute(
    rep: Replacement,
    prompt: str,
    target_id: int | None,
    *,
    max_feature_nodes: int,
    batch_size: int,
    select_size: int,
    row_edges: int | None,
    max_logits: int,
    desired_prob: float,
    progress: bool,
) -> Graph:
    lm = rep.lm
    n_pos, n_layers = rep.n_pos, lm.n_layers
    probs = torch.softmax(rep.clean_logits[-1].float(), -1)  # [vocab]
    logit_ids = logit_nodes(probs, target_id, max_logits=max_logits, desired_prob=desired_prob)
    # [n_logits, d_model] de-meaned unembedding rows, times the soft-cap's slope where the
    # model caps its logits (Gemma 2): lmscope.models.logits
    logit_dirs = demeaned_logit_directions(lm, rep.clean_logits[-1], logit_ids).to(rep.embed.dtype)

    # All active features: (layer, pos, feature), their activation and what they write;
    # ordered by layer, then position, so each (layer, pos) is a contiguous run of columns.
    feats, vals = [], []
    for L, st in rep.layers.items():
        pos, f = st.acts.nonzero(as_tuple=True)
        feats.append(torch.stack([torch.full_like(pos, L), pos, f], 1))
        vals.append(st.acts[pos, f])
    feats_t = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
    vals_t = torch.cat(vals) if vals else torch.zeros(0)
    n_active = feats_t.shape[0]
    n_err, n_tok, n_log = n_layers * n_pos, n_pos, len(logit_ids)
    bucket = feats_t[:, 0] * n_pos + feats_t[:, 1]  # each feature's error node (layer, pos)
    # Rows only for the nodes whose inputs get computed (visited features + logits), in the
    # order they are filled. Feature columns: every active feature's edge (dense), or only
    # the `row_edges` largest |edges| of the row (values + columns), the rest of the row's
    # feature input summed into the error node of its (layer, pos) in `dropped`. Error and
    # token columns are dense.
    n_rows = min(max_feature_nodes, n_active) + n_log
    dense = row_edges is None or row_edges >= n_active
    if dense:
        F = torch.zeros(n_rows, n_active)
    else:
        Fv = torch.zeros(n_rows, row_edges)
        Fi = torch.zeros(n_rows, row_edges, dtype=torch.int32)
        dropped = torch.zeros(n_rows, n_err)
    ET = torch.zeros(n_rows, n_err + n_tok)
    den = torch.zeros(n_rows)  # each row's total |input| over every column
    slot_nodes: list[int] = []  # node of each filled row: active-feature index, or log0 + j
    log0 = n_active + n_err + n_tok
    layer_rows = {L: (feats_t[:, 0] == L).nonzero(as_tuple=True)[0] for L in rep.layers}

    # Features are chosen `select` at a time (one influence update each); their rows are filled
    # by backward passes of at most `batch_size` targets (the memory plan may lower it: the
    # same graph, in smaller chunks).
    select = max(1, min(select_size, max(n_log, min(n_active, max_feature_nodes))))
    B = max(1, min(batch_size, select))
    timing = {"forward": 0.0, "backward": 0.0, "influence": 0.0}
    # What each active feature writes (activation x decoder row) is not stored: an edge is
    # a_f <g_p, dec_f>, recomputed in every backward from the activation and the decoder row
    # (storing the writes was n_active x d_model floats, 2.1 GB at 1,024 tokens). Per layer,
    # the features are laid out [positions with features, most per position], padded.
    layouts = {L: _write_layout(feats_t[idx], vals_t[idx], idx) for L, idx in layer_rows.items()}
    tf = time.perf_counter()
    # One forward on the prompt; each backward below is vmapped over up to B injected
    # gradients (is_grads_batched): 4-5x faster than a forward on B copies + one backward.
    run = rep.forward(1, grad=True, logits=False)
    timing["forward"] = time.perf_counter() - tf
    peak = 0
    drop_share: list[Tensor] = []

    def fill_rows(row_ids: list[int]) -> None:
        """Backward for up to B target nodes at once; stores their rows."""
        nonlocal peak
        n = len(row_ids)
        outs, grads = [], []
        inj: dict[int, Tensor] = {}
        fin = None
        for i, r in enumerate(row_ids):
            if r >= log0:  # a logit node: its de-meaned unembedding at the last position
                if fin is None:
                    fin = run.ln_final.new_zeros((n, *run.ln_final.shape))  # [n, 1, pos, d_model]
                fin[i, 0, -1] = logit_dirs[r - log0]
            else:  # a feature node: its encoder column at mlp_in (its layer, its position)
                L, p, f = feats_t[r].tolist()
                if L not in inj:
                    inj[L] = run.mlp_in[L].new_zeros((n, *run.mlp_in[L].shape))
                inj[L][i, 0, p] = rep.layers[L].enc[:, f]
        for L, gL in inj.items():
            outs.append(run.mlp_in[L])
            grads.append(gL)
        if fin is not None:
            outs.append(run.ln_final)
            grads.append(fin)
        srcs = [run.write_leaves[L] for L in rep.layers] + [run.embed_leaf]
        tb = time.perf_counter()
        gs = torch.autograd.grad(
            outs, srcs, grads, retain_graph=True, allow_unused=True, is_grads_batched=True
        )  # each [n, 1, pos, d_model]
        del inj, fin, grads
        timing["backward"] += time.perf_counter() - tb
        s0 = len(slot_nodes)
        slot_nodes.extend(row_ids)
        sl = slice(s0, s0 + n)
        block = torch.zeros(n, n_active)  # the rows' feature edges
        et = ET[sl]
        g_at = {  # d targets / d write at each layer's MLP output, [n, pos, d_model]
            L: (gL[:, 0].float() if gL is not None else None) for L, gL in zip(rep.layers, gs[:-1])
        }
        for L, gL in g_at.items():
            st = rep.layers[L]
            if st.dec_out is None:  # a per-layer transcoder writes to its own layer only
                if gL is not None:
                    _write_edges(block, [gL], st.dec, layouts[L])
            else:  # a CLT feature of layer L writes to layers L..: sum over its targets
                later = [g_at[t] for t in range(L, n_layers)]
                if any(g is not None for g in later):
                    zero = torch.zeros(n, n_pos, lm.d_model)
                    later = [zero if g is None else g for g in later]
                    dec_all = st.dec_out.reshape(st.dec_out.shape[0], -1)  # [d_sae, T * d]
                    _write_edges(block, later, dec_all, layouts[L])
            if gL is not None:
                et[:, L * n_pos : (L + 1) * n_pos] = torch.einsum(
                    "bpd,pd->bp", gL, st.error.float()
                )
        gE = gs[-1]
        if gE is not None:
            et[:, n_err:] = torch.einsum("bpd,pd->bp", gE[:, 0].float(), rep.embed.float())
        del gs
        absb = block.abs()
        den[sl] = absb.sum(1) + et.abs().sum(1)
        if dense:
            F[sl] = block
        else:
            top = absb.topk(row_edges, dim=1, sorted=False).indices  # [n, K]
            Fv[sl] = block.gather(1, top)
            Fi[sl] = top.to(torch.int32)
            kept_abs = absb.gather(1, top).sum(1)
            tot = absb.sum(1)  # a row without feature input has dropped nothing
            drop_share.append(torch.where(tot > 0, 1 - kept_abs / tot.clamp_min(1e-30), 0.0))
            block.scatter_(1, top, 0.0)
            dropped[sl] = torch.zeros(n, n_err).index_add_(1, bucket, block)
        if torch.cuda.is_available():
            peak = max(peak, torch.cuda.max_memory_allocated())

    n_batches = 0
    # 1) logit rows.
    for s in range(0, n_log, B):
        fill_rows(list(range(log0 + s, log0 + min(n_log, s + B))))
        n_batches += 1
    # 2) feature rows, most influential first (influence recomputed after every batch).
    w_all = torch.zeros(n_rows)
    w_all[:n_log] = probs[logit_ids].float()
    visited = torch.zeros(n_active, dtype=torch.bool)
    budget = min(max_feature_nodes, n_active)
    bar = tqdm(total=budget, desc="graph rows", disable=not progress, unit="feature")
    while int(visited.sum()) < budget:
        ti = time.perf_counter()
        filled = len(slot_nodes)
        row_feature = torch.tensor([r if r < n_active else -1 for r in slot_nodes])
        stored = F[:filled] if dense else (Fv[:filled], Fi[:filled])
        infl = _feature_influence(stored, den[:filled], w_all[:filled], row_feature, n_active)
        timing["influence"] += time.perf_counter() - ti
        infl[visited] = -1.0
        take = min(select, budget - int(visited.sum()))
        nxt = infl.topk(take).indices
        visited[nxt] = True
        for c in range(0, take, B):
            fill_rows(nxt[c : c + B].tolist())
            n_batches += 1
        bar.update(take)
    bar.close()

    # Keep the visited features (circuit-tracer's "selected features"); fold the others'
    # direct effects into the error node of their (layer, position).
    keep_f = visited.nonzero(as_tuple=True)[0]
    left = (~visited).nonzero(as_tuple=True)[0]
    n_filled = len(slot_nodes)
    folded = torch.zeros(n_filled, n_err)
    nf = int(keep_f.numel())
    side = nf + n_err + n_tok + n_log
    new_index = torch.full((n_active,), -1, dtype=torch.long)
    new_index[keep_f] = torch.arange(nf)
    slots = torch.tensor(slot_nodes)
    is_f = slots < n_active
    row_new = torch.empty_like(slots)
    row_new[is_f] = new_index[slots[is_f]]
    row_new[~is_f] = nf + n_err + n_tok + (slots[~is_f] - log0)
    # The graph keeps only the filled rows (every other row is zero), in node order.
    order = row_new.argsort()
    row_new = row_new[order]
    rows = torch.zeros(n_filled, side)
    if dense:
        rows[:, :nf] = F[:n_filled, keep_f][order]
        for c in range(0, int(left.numel()), 65536):  # in chunks: no copy of every column
            cols = left[c : c + 65536]
            folded.index_add_(1, bucket[cols], F[:n_filled, cols])
        del F
    else:
        cols = Fi[:n_filled].long()
        vis = visited[cols]
        r_idx = torch.empty_like(order)
        r_idx[order] = torch.arange(n_filled)  # filled row -> its row in `rows`
        r_idx = r_idx[:, None].expand_as(cols)
        rows[r_idx[vis], new_index[cols[vis]]] = Fv[:n_filled][vis]
        folded.scatter_add_(1, bucket[cols], Fv[:n_filled] * ~vis)
        folded += dropped[:n_filled]
        del Fv, Fi, dropped
    folded = folded[order]
    rows[:, nf : nf + n_err] = ET[:n_filled, :n_err][order] + folded
    rows[:, nf + n_err : nf + n_err + n_tok] = ET[:n_filled, n_err:][order]
    tok_list = rep.tokens[0].tolist()
    shares = torch.cat(drop_share) if drop_share else torch.zeros(0)
    return Graph(
        prompt=prompt,
        tokens=tok_list,
        str_tokens=lm.to_str_tokens(tok_list),
        n_layers=n_layers,
        features=feats_t[keep_f],
        activations=vals_t[keep_f].float(),
        logit_tokens=logit_ids,
        logit_strs=lm.to_str_tokens(logit_ids),
        logit_probs=probs[logit_ids].float(),
        rows=rows,
        row_nodes=row_new,
        unexpanded_rows=folded,
        stats={
            "active_features": n_active,
            "feature_nodes": nf,
            "unexpanded_features": int(left.numel()),
            "unexpanded_fraction": float(left.numel() / max(n_active, 1)),
            "backward_batches": n_batches,
            "batch_size": B,
            "select_size": select,
            "row_edges": None if dense else row_edges,
            "dropped_edge_share_mean": float(shares.mean()) if shares.numel() else 0.0,
            "dropped_edge_share_max": float(shares.max()) if shares.numel() else 0.0,
            "peak_cuda_bytes": peak or None,
            **{f"{k}_seconds": v for k, v in timing.items()},
        },
    )


def feature_input(rep: Replacement, run, layer: int, pos: int, feature: int) -> Tensor:
    """[batch] the encoder pre-activation of one feature in a frozen run (a target node's input)."""
    return rep.pre_acts(run, layer)[:, pos, feature]


def logit_input(rep: Replacement, run, token: int) -> Tensor:
    """[batch] the de-meaned logit of `token` at the last position in a frozen run."""
    logits = run.logits[:, -1].float()
    return logits[:, token] - logits.mean(-1)


__all__ = ["Graph", "build_graph", "feature_input", "logit_input", "logit_nodes"]

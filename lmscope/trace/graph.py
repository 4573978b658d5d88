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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import UserError
from ..models.logits import demeaned_logit_directions
from .replacement import Replacement, replacement

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


@dataclass
class Graph:
    """An attribution graph on one prompt (unpruned)."""

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
    adjacency: Tensor
    """[n_nodes, n_nodes] direct effects, rows = targets, columns = sources."""
    model: str = ""
    hooks: list[str] = field(default_factory=list)
    """The transcoders' input hooks (the 'scan')."""
    stats: dict = field(default_factory=dict)
    """seconds, peak bytes, active features, backward batches."""
    unexpanded: Tensor | None = None
    """[n_nodes, n_errors] the part of the error columns of `adjacency` that comes from
    active features left out of the graph (None or zeros when every one was expanded)."""

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

    def adjacency_as_circuit_tracer(self) -> Tensor:
        """The adjacency without the unexpanded features' effects in the error columns.

        circuit-tracer drops the columns of the active features it does not expand, so
        their direct effects count neither as feature nor as error input; lmscope folds
        them into the error nodes. This undoes the fold, for comparisons with its figures.
        """
        if self.unexpanded is None:
            return self.adjacency
        A = self.adjacency.clone()
        A[:, self.error_start : self.token_start] -= self.unexpanded
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


def estimate_bytes(
    lm: LanguageModel,
    n_pos: int,
    batch_size: int,
    n_active: int,
    n_logits: int = 10,
    max_feature_nodes: int | None = None,
) -> int:
    """Peak memory of a graph build: the batched forward's saved tensors + the adjacency.

    Per layer and token a vmapped backward over `batch_size` gradients holds ~24
    d_model-sized float tensors per gradient (norm inputs, values, attention output,
    residual, write leaves) plus the heads x pos pattern; the adjacency holds the computed rows
    over all n_nodes columns.
    """
    cfg = lm.model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 8)
    d, L = lm.d_model, lm.n_layers
    itemsize = torch.finfo(lm.dtype).bits // 8
    forward = batch_size * n_pos * L * (24 * d + heads * n_pos) * itemsize
    n_nodes = n_active + L * n_pos + n_pos + n_logits
    rows = min(n_active, max_feature_nodes or n_active) + n_logits
    adjacency = (
        rows * n_nodes * 4 + (rows + L * n_pos + n_pos) ** 2 * 4
    )  # filled rows + kept square
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    return forward + adjacency + weights


def build_graph(
    lm: LanguageModel,
    transcoders: dict[int, SparseDictionary],
    prompt: str,
    *,
    target: str | int | None = None,
    max_feature_nodes: int = 4096,
    batch_size: int = 64,
    max_logits: int = 10,
    desired_prob: float = 0.95,
    max_memory_gb: float = 16.0,
    progress: bool = False,
) -> Graph:
    """The attribution graph of `prompt` through per-layer transcoders {layer: dictionary}.

    target: a token string/id to put first among the logit nodes (default: the top token).
    Features are visited in order of their current influence on the logits (as in
    circuit-tracer) until `max_feature_nodes`; the rest get no node and their direct
    effects go into the error nodes (stats: unexpanded_features, unexpanded_fraction).
    Raises UserError when the estimated memory exceeds `max_memory_gb`.
    """
    from .attribution import resolve_target

    t0 = time.perf_counter()
    tokens = lm.to_tokens(prompt)
    target_id = None if target is None else resolve_target(lm, target)
    # The active-feature count is known only after the clean pass; bound it by k per token.
    k_bound = sum(getattr(tc.cfg, "k", 64) for tc in transcoders.values()) * tokens.shape[1]
    need = estimate_bytes(lm, tokens.shape[1], batch_size, k_bound, max_logits, max_feature_nodes)
    if need > max_memory_gb * 2**30:
        raise UserError(
            f"a graph of this {tokens.shape[1]}-token prompt needs about {need / 2**30:.1f} GB "
            f"(limit --max-memory-gb {max_memory_gb:g}); shorten the prompt, lower --batch-size or "
            "--max-feature-nodes, or raise the limit"
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with replacement(lm, transcoders, tokens) as rep:
        g = _attribute(
            rep,
            prompt,
            target_id,
            max_feature_nodes=max_feature_nodes,
            batch_size=batch_size,
            max_logits=max_logits,
            desired_prob=desired_prob,
            progress=progress,
        )
    g.model = lm.name
    g.hooks = [transcoders[L].cfg.hook_name for L in sorted(transcoders)]
    g.stats["seconds"] = time.perf_counter() - t0
    g.stats["estimated_bytes"] = need
    return g


def _attribute(
    rep: Replacement,
    prompt: str,
    target_id: int | None,
    *,
    max_feature_nodes: int,
    batch_size: int,
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

    # All active features: (layer, pos, feature), their activation and what they write.
    feats, vals = [], []
    for L, st in rep.layers.items():
        pos, f = st.acts.nonzero(as_tuple=True)
        feats.append(torch.stack([torch.full_like(pos, L), pos, f], 1))
        vals.append(st.acts[pos, f])
    feats_t = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
    vals_t = torch.cat(vals) if vals else torch.zeros(0)
    n_active = feats_t.shape[0]
    n_err, n_tok, n_log = n_layers * n_pos, n_pos, len(logit_ids)
    # Work in the full active-feature index space; select columns at the end.
    N = n_active + n_err + n_tok + n_log
    # Rows only for the nodes whose inputs get computed (visited features + logits), in the
    # order they are filled; columns over every node. [n_rows, N], not N x N.
    n_rows = min(max_feature_nodes, n_active) + n_log
    A = torch.zeros(n_rows, N)
    slot_of: dict[int, int] = {}
    slot_nodes: list[int] = []
    err0, tok0, log0 = n_active, n_active + n_err, n_active + n_err + n_tok
    layer_rows = {L: (feats_t[:, 0] == L).nonzero(as_tuple=True)[0] for L in rep.layers}

    B = max(1, min(batch_size, max(n_log, min(n_active, max_feature_nodes))))
    timing = {"forward": 0.0, "backward": 0.0, "influence": 0.0}
    # What each active feature writes: activation x decoder row, [n_L, d_model] per layer.
    writes: dict[
        int, dict[int, tuple[Tensor, Tensor]]
    ] = {}  # layer -> pos -> (columns, [n_p, d_model])
    for L, idx in layer_rows.items():
        writes[L] = {}
        for p in feats_t[idx, 1].unique().tolist():
            cols = idx[feats_t[idx, 1] == p]
            writes[L][p] = (
                cols,
                vals_t[cols, None].float() * rep.layers[L].dec[feats_t[cols, 2]].float(),
            )
    tf = time.perf_counter()
    # One forward on the prompt; each backward below is vmapped over up to B injected
    # gradients (is_grads_batched): 4-5x faster than a forward on B copies + one backward.
    run = rep.forward(1, grad=True, logits=False)
    timing["forward"] = time.perf_counter() - tf
    peak = 0

    def fill_rows(row_ids: list[int]) -> None:
        """Backward for up to B target nodes at once; writes their rows of A."""
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
        timing["backward"] += time.perf_counter() - tb
        for r in row_ids:
            slot_of[r] = len(slot_nodes)
            slot_nodes.append(r)
        rows = torch.tensor([slot_of[r] for r in row_ids])
        for L, gL in zip(rep.layers, gs[:-1]):
            if gL is None:
                continue
            gL = gL[:, 0].float()  # [n, pos, d_model]
            st = rep.layers[L]
            for p, (cols, w_p) in writes[L].items():  # sources grouped by position
                A[rows[:, None], cols[None, :]] = gL[:, p] @ w_p.t()  # [n, n_sources at p]
            e = torch.einsum("bpd,pd->bp", gL, st.error.float())  # [n, pos]
            A[rows[:, None], (err0 + L * n_pos + torch.arange(n_pos))[None, :]] = e
        gE = gs[-1]
        if gE is not None:
            A[rows[:, None], (tok0 + torch.arange(n_pos))[None, :]] = torch.einsum(
                "bpd,pd->bp", gE[:, 0].float(), rep.embed.float()
            )
        if torch.cuda.is_available():
            peak = max(peak, torch.cuda.max_memory_allocated())

    n_batches = 0
    # 1) logit rows.
    for s in range(0, n_log, B):
        fill_rows(list(range(log0 + s, log0 + min(n_log, s + B))))
        n_batches += 1
    # 2) feature rows, most influential first (influence recomputed after every batch).
    from .prune import partial_influence

    logit_w = torch.zeros(N)
    logit_w[log0:] = probs[logit_ids].float()
    visited = torch.zeros(n_active, dtype=torch.bool)
    budget = min(max_feature_nodes, n_active)
    bar = tqdm(total=budget, desc="graph rows", disable=not progress, unit="feature")
    while int(visited.sum()) < budget:
        ti = time.perf_counter()
        filled = len(slot_nodes)
        infl = partial_influence(A[:filled], torch.tensor(slot_nodes), logit_w)[:n_active].clone()
        timing["influence"] += time.perf_counter() - ti
        infl[visited] = -1.0
        take = min(B, budget - int(visited.sum()))
        nxt = infl.topk(take).indices
        visited[nxt] = True
        fill_rows(nxt.tolist())
        n_batches += 1
        bar.update(take)
    bar.close()

    # Keep the visited features (circuit-tracer's "selected features"); fold the others'
    # direct effects into the error node of their (layer, position).
    keep_f = visited.nonzero(as_tuple=True)[0]
    left = (~visited).nonzero(as_tuple=True)[0]
    filled = A[: len(slot_nodes)]
    folded = torch.zeros(filled.shape[0], n_err)
    if left.numel():
        folded.index_add_(1, feats_t[left, 0] * n_pos + feats_t[left, 1], filled[:, left])
        filled[:, err0:tok0] += folded
    keep = torch.cat([keep_f, torch.arange(n_active, N)])
    adjacency = torch.zeros(len(keep), len(keep))
    unexpanded = torch.zeros(len(keep), n_err)
    new_index = torch.full((N,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(len(keep))
    slots = torch.tensor(slot_nodes)
    adjacency[new_index[slots]] = filled[:, keep]
    unexpanded[new_index[slots]] = folded
    tok_list = rep.tokens[0].tolist()
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
        adjacency=adjacency,
        unexpanded=unexpanded,
        stats={
            "active_features": n_active,
            "feature_nodes": int(keep_f.numel()),
            "unexpanded_features": int(left.numel()),
            "unexpanded_fraction": float(left.numel() / max(n_active, 1)),
            "backward_batches": n_batches,
            "batch_size": B,
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


__all__ = ["Graph", "build_graph", "estimate_bytes", "feature_input", "logit_input", "logit_nodes"]

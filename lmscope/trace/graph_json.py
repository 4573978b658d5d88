"""An attribution graph as the JSON that circuit-tracer's and Neuronpedia's graph viewers read.

The format (circuit-tracer `frontend/graph_models.py` + `utils/create_graph_files.py`):

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
    schema_version},
     "qParams":  {pinnedIds, supernodes, linkType, clickedId, sg_pos},
     "nodes":    [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit,
                   run_idx, reverse_ctx_idx, jsNodeId, clerp, influence, activation}],
     "links":    [{source, target, weight}]}

Node ids: feature "{layer}_{feature}_{pos}", error "{layer}_-1_{pos}", token embedding
"E_{token_id}_{pos}", logit "{n_layers + 1}_{token_id}_{pos}". `feature` is the Cantor
pairing of (layer, feature) for features (circuit-tracer's choice for local transcoders),
the position for tokens, the token id for logits, -1 for errors. We add, as extra keys the
viewers ignore, `lmscope_hook` / `lmscope_feature` (which dictionary and latent) and a
`metadata.lmscope` block with the scores (lmscope's, and `circuit_tracer_scores` computed as
circuit-tracer's published figures are), the share of active features left unexpanded and
build stats. docs/trace.md has the table.
"""

from __future__ import annotations

import re

from .graph import Graph
from .prune import PruneResult, circuit_tracer_scores, graph_scores

SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _slug(prompt: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return s[:60] or "graph"


def node_ids(g: Graph) -> list[str]:
    """The node_id of every node, in adjacency order."""
    ids = [f"{L}_{f}_{p}" for L, p, f in g.features.tolist()]
    ids += [f"{L}_-1_{p}" for L in range(g.n_layers) for p in range(g.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(g.tokens)]
    ids += [f"{g.n_layers + 1}_{t}_{g.n_pos - 1}" for t in g.logit_tokens]
    return ids


def graph_json(
    g: Graph,
    pruned: PruneResult,
    *,
    slug: str | None = None,
    labels=None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict:
    """The viewer JSON of a pruned graph. labels: optional callable (hook, feature) -> str."""
    ids = node_ids(g)
    hooks = g.hooks or [f"blocks.{L}.mlp_in" for L in range(g.n_layers)]
    hook_of = {int(h.split(".")[1]): h for h in hooks if h.startswith("blocks.")}
    nodes: dict[int, dict] = {}
    infl = pruned.cumulative.tolist()
    for i in pruned.node_mask.nonzero(as_tuple=True)[0].tolist():
        base = {
            "node_id": ids[i],
            "token_prob": 0.0,
            "is_target_logit": False,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "clerp": "",
            "influence": infl[i],
            "activation": None,
        }
        if i < g.error_start:
            L, p, f = g.features[i].tolist()
            hook = hook_of.get(L, f"blocks.{L}.mlp_in")
            label = (labels(hook, f) if labels else "") or ""
            base.update(
                feature=_cantor(L, f),
                layer=str(L),
                ctx_idx=p,
                feature_type="cross layer transcoder",
                jsNodeId=f"{L}_{f}-0",
                clerp=label,
                activation=float(g.activations[i]),
                lmscope_hook=hook,
                lmscope_feature=f,
            )
        elif i < g.token_start:
            L, p = divmod(i - g.error_start, g.n_pos)
            base.update(
                feature=-1,
                layer=str(L),
                ctx_idx=p,
                feature_type="mlp reconstruction error",
                jsNodeId=f"{L}_-1-{p}",
            )
        elif i < g.logit_start:
            p = i - g.token_start
            base.update(
                feature=p,
                layer="E",
                ctx_idx=p,
                feature_type="embedding",
                jsNodeId=f"E_{g.tokens[p]}-{p}",
                clerp=g.str_tokens[p],
            )
        else:
            j = i - g.logit_start
            t, prob = g.logit_tokens[j], float(g.logit_probs[j])
            base.update(
                feature=t,
                layer=str(g.n_layers + 1),
                ctx_idx=g.n_pos - 1,
                feature_type="logit",
                token_prob=prob,
                is_target_logit=j == 0,
                jsNodeId=f"L_{t}-{g.n_pos - 1}",
                clerp=f'Output "{g.logit_strs[j]}" (p={prob:.3f})',
                influence=None,
            )
        nodes[i] = base
    # Kept edges from the rows (no square adjacency or mask: graph.rows, pruned.edge_rows).
    r, src = pruned.edge_rows_at(g.row_nodes).nonzero(as_tuple=True)
    weights = g.rows[r, src].tolist()
    dst = g.row_nodes[r]
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(dst.tolist(), src.tolist(), weights)
        if s in nodes and t in nodes
    ]
    linked = {x for link in links for x in (link["source"], link["target"])}
    kept = [
        n
        for n in nodes.values()
        if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")
    ]
    full, part = graph_scores(g), graph_scores(g, pruned)
    n_active = int(g.stats.get("active_features", g.n_features))
    n_left = int(g.stats.get("unexpanded_features", 0))
    return {
        "metadata": {
            "slug": slug or _slug(g.prompt),
            "scan": g.model or "lmscope",
            "transcoder_list": list(hooks),
            "prompt_tokens": g.str_tokens,
            "prompt": g.prompt,
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
            "lmscope": {
                "model": g.model,
                "edge_threshold": edge_threshold,
                "replacement_score": full.replacement,
                "completeness_score": full.completeness,
                "pruned_replacement_score": part.replacement,
                "pruned_completeness_score": part.completeness,
                "active_features": n_active,
                "unexpanded_features": n_left,
                "unexpanded_fraction": n_left / max(n_active, 1),
                "circuit_tracer_scores": circuit_tracer_scores(g, node_threshold, edge_threshold),
                "n_nodes": len(kept),
                "n_links": len(links),
                "stats": {k: v for k, v in g.stats.items() if v is not None},
            },
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": kept,
        "links": links,
    }

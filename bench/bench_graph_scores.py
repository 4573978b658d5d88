"""Graph scores: lmscope's definitions, checked against circuit-tracer's own code on the same graph.

One lmscope graph (a real model, an atlas with a transcoder per layer) is scored four ways:

- lmscope full: `compute_graph_scores` on lmscope's adjacency, whose error nodes hold the
  active features that were not expanded (lmscope/trace/graph.py);
- lmscope pruned: the features outside the pruned graph folded into the error node of their
  (layer, position), pruned errors and edges zeroed (lmscope/trace/prune.py);
- circuit-tracer's way (how its published figures are computed): the unexpanded features'
  columns dropped; pruned = `compute_graph_scores` on that adjacency zeroed outside
  `prune_graph`'s masks;
- the old lmscope method (before issue 14), for "what changed".

Then, in circuit-tracer's own venv, its `prune_graph` and `compute_graph_scores` run on the
same adjacency matrices, and its PR #42 `compute_subgraph_scores` (not in the 0.5 release;
re-implemented here from its definition, loop by loop) runs with the pruned graph's
features pinned and every other feature eligible for folding. Every pair must agree.

    .venv/bin/python bench/bench_graph_scores.py ATLAS [--prompt P] [--ct-python VENV/bin/python]
    .venv/bin/python bench/bench_graph_scores.py /tmp/lmscope-bench-graph --random-transcoders

circuit-tracer's venv: python3 -m venv ct-venv && ct-venv/bin/pip install torch==2.13.0
circuit-tracer.
Writes bench/results/graph_scores.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


def old_scores(g, pr) -> tuple[float, float]:
    """lmscope before issue 14: unexpanded features dropped (their columns gone), pruned
    features relabelled as error but kept with their inputs, the edge mask ignored."""
    from lmscope.trace.prune import influence, logit_weights, normalize_rows

    A = g.adjacency_as_circuit_tracer()
    is_err = __import__("torch").zeros(g.n_nodes, dtype=bool)
    is_err[g.error_start : g.token_start] = True
    if pr is not None:
        dropped = ~pr.node_mask
        dropped[g.error_start :] = False
        is_err = is_err | dropped
    w = logit_weights(g)
    B = normalize_rows(A)
    infl = influence(B, w)
    tok = infl[g.token_start : g.logit_start].sum()
    err = infl[is_err].sum()
    weight = infl + w
    comp = ((1 - B[:, is_err].sum(1)) * weight).sum() / weight.sum()
    return float(tok / (tok + err)), float(comp)


def build(args) -> tuple[dict, dict]:
    import torch

    from lmscope.cli.trace import load_atlas
    from lmscope.trace import build_graph, check_transcoders, graph_scores, prune
    from lmscope.trace.prune import circuit_tracer_scores

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.random_transcoders:  # bench_graph.py's 30 random JumpReLU transcoders on SmolLM2
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_graph import make_transcoders

        from lmscope.dictionaries import load_dictionary
        from lmscope.models import load_model

        tc_dir = Path(args.atlas)
        if not (tc_dir / "model_path").exists():
            make_transcoders(tc_dir, 4096, 32)
        lm = load_model("smollm2-135m")
        tcs = {
            L: load_dictionary(tc_dir / "lmscope" / f"blocks.{L}.mlp_in").eval()
            for L in range(lm.n_layers)
        }
    else:
        lm, dicts, _ = load_atlas(args.atlas, model=None, device="cpu")
        tcs = check_transcoders(lm, dicts)
    t = time.perf_counter()
    g = build_graph(
        lm, tcs, args.prompt, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size
    )
    seconds = time.perf_counter() - t
    pr = prune(g, args.node_threshold, args.edge_threshold)
    full, part = graph_scores(g), graph_scores(g, pr)
    ct = circuit_tracer_scores(g, args.node_threshold, args.edge_threshold)
    old_full, old_part = old_scores(g, None), old_scores(g, pr)
    res = {
        "prompt": args.prompt,
        "target": g.logit_strs[0],
        "n_pos": g.n_pos,
        "build_seconds": seconds,
        "active_features": g.stats["active_features"],
        "feature_nodes": g.n_features,
        "unexpanded_features": g.stats["unexpanded_features"],
        "unexpanded_fraction": g.stats["unexpanded_fraction"],
        "kept_features": int(pr.node_mask[: g.n_features].sum()),
        "lmscope": {
            "replacement_score": full.replacement,
            "completeness_score": full.completeness,
            "pruned_replacement_score": part.replacement,
            "pruned_completeness_score": part.completeness,
        },
        "circuit_tracer_way": ct,
        "old_lmscope_method": {
            "replacement_score": old_full[0],
            "completeness_score": old_full[1],
            "pruned_replacement_score": old_part[0],
            "pruned_completeness_score": old_part[1],
        },
    }
    cfg = lm.model.config
    tensors = {
        "adjacency": g.adjacency,
        "adjacency_ct": g.adjacency_as_circuit_tracer(),
        "features": g.features,
        "activations": g.activations,
        "tokens": torch.tensor(g.tokens),
        "logit_tokens": torch.tensor(g.logit_tokens),
        "logit_probs": g.logit_probs,
        "node_mask": pr.node_mask,
        "edge_mask": pr.edge_mask,
        "meta": {
            "n_layers": g.n_layers,
            "d_model": lm.d_model,
            "d_vocab": int(cfg.vocab_size),
            "prompt": g.prompt,
            "logit_strs": g.logit_strs,
            "node_threshold": args.node_threshold,
            "edge_threshold": args.edge_threshold,
        },
    }
    return res, tensors


# --- runs in circuit-tracer's venv ----------------------------------------------------------
def _ct_graph(t: dict, adjacency):
    import torch
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.graph import Graph
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

    m = t["meta"]
    # Only n_layers (error-node count) enters the scores; the other sizes are placeholders.
    cfg = UnifiedConfig(
        n_layers=m["n_layers"],
        d_model=m["d_model"],
        d_head=1,
        n_heads=1,
        d_mlp=1,
        d_vocab=m["d_vocab"],
        tokenizer_name="lmscope",
        model_name="lmscope",
        original_architecture="lmscope",
    )
    n = t["features"].shape[0]
    return Graph(
        input_string=m["prompt"],
        input_tokens=t["tokens"],
        active_features=t["features"],
        adjacency_matrix=adjacency.clone(),
        cfg=cfg,
        selected_features=torch.arange(n),
        activation_values=t["activations"],
        logit_targets=[LogitTarget(s, int(i)) for s, i in zip(m["logit_strs"], t["logit_tokens"])],
        logit_probabilities=t["logit_probs"],
        scan="lmscope",
    )


def subgraph_scores_pr42(graph, pinned: set, node_mask, edge_mask) -> tuple[float, float]:
    """circuit-tracer PR #42 `compute_subgraph_scores`, re-implemented from its definition:
    every feature that passes node_mask and is not pinned has its column added to the error
    node at its (layer, position) and its row and column zeroed; then rows and columns outside
    node_mask are zeroed, the edge mask applied, and compute_graph_scores' formulas used."""
    from circuit_tracer.graph import compute_influence, normalize_matrix

    n_pos, n_layers = len(graph.input_tokens), graph.cfg.n_layers
    n_feat = len(graph.selected_features)
    M = graph.adjacency_matrix.clone()
    for i in range(n_feat):
        if not bool(node_mask[i]) or i in pinned:
            continue
        L, p, _ = graph.active_features[graph.selected_features[i]].tolist()
        e = n_feat + L * n_pos + p
        M[:, e] += M[:, i]
        M[i, :] = 0
        M[:, i] = 0
    M[~node_mask] = 0
    M[:, ~node_mask] = 0
    M = M * edge_mask
    w = M.new_zeros(M.shape[0])
    w[-len(graph.logit_probabilities) :] = graph.logit_probabilities
    B = normalize_matrix(M)
    infl = compute_influence(B, w)
    e0, e1, t1 = n_feat, n_feat + n_layers * n_pos, n_feat + n_layers * n_pos + n_pos
    tok, err = infl[e1:t1].sum(), infl[e0:e1].sum()
    non_err = 1 - B[:, e0:e1].sum(-1)
    out = infl + w
    return float(tok / (tok + err)), float((non_err * out).sum() / out.sum())


def peer(path: str) -> None:
    import torch
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    t = torch.load(path, weights_only=False)
    m = t["meta"]
    ours = _ct_graph(t, t["adjacency"])
    full = compute_graph_scores(ours)
    nf = t["features"].shape[0]
    node_mask = t["node_mask"].clone()
    node_mask[:nf] = True  # every feature outside the pruned graph goes through the fold
    kept = set(t["node_mask"][:nf].nonzero().flatten().tolist())
    pruned = subgraph_scores_pr42(ours, kept, node_mask, t["edge_mask"])
    pr_ours = prune_graph(ours, m["node_threshold"], m["edge_threshold"])
    theirs = _ct_graph(t, t["adjacency_ct"])
    ct_full = compute_graph_scores(theirs)
    pr = prune_graph(theirs, m["node_threshold"], m["edge_threshold"])
    A = theirs.adjacency_matrix * pr.node_mask[:, None] * pr.node_mask[None, :] * pr.edge_mask
    ct_pruned = compute_graph_scores(_ct_graph(t, A))
    print(
        "RESULT "
        + json.dumps(
            {
                "lmscope": {
                    "replacement_score": full[0],
                    "completeness_score": full[1],
                    "pruned_replacement_score": pruned[0],
                    "pruned_completeness_score": pruned[1],
                },
                "circuit_tracer_way": {
                    "replacement_score": ct_full[0],
                    "completeness_score": ct_full[1],
                    "pruned_replacement_score": ct_pruned[0],
                    "pruned_completeness_score": ct_pruned[1],
                },
                "prune_graph_node_mask_equal": bool(torch.equal(pr_ours.node_mask, t["node_mask"])),
                "prune_graph_edge_mask_equal": bool(torch.equal(pr_ours.edge_mask, t["edge_mask"])),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "atlas",
        nargs="?",
        help="an atlas with a transcoder per layer (or, with "
        "--random-transcoders, bench_graph.py's --tc-dir, made if missing)",
    )
    ap.add_argument("--random-transcoders", action="store_true")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-feature-nodes", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--node-threshold", type=float, default=0.8)
    ap.add_argument("--edge-threshold", type=float, default=0.98)
    ap.add_argument(
        "--ct-python",
        default=str(ROOT / ".venv-ct" / "bin" / "python"),
        help="python of a venv with circuit-tracer installed",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "graph_scores.json"))
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        peer(args.peer)
        return
    if not args.atlas:
        ap.error("ATLAS is required")
    import torch

    res, tensors = build(args)
    print(json.dumps(res, indent=1))
    ct_row = None
    if Path(args.ct_python).exists():
        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "graph.pt")
            torch.save(tensors, path)
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            p = subprocess.run(
                [args.ct_python, __file__, "--peer", path], capture_output=True, text=True, env=env
            )
            for line in p.stdout.splitlines():
                if line.startswith("RESULT "):
                    ct_row = json.loads(line[7:])
            if ct_row is None:
                print(f"circuit-tracer run failed:\n{p.stderr[-3000:]}", file=sys.stderr)
    else:
        print(
            f"no circuit-tracer venv at {args.ct_python}: skipping the check with its code",
            file=sys.stderr,
        )
    if ct_row:
        diffs = {
            f"{who}.{k}": abs(ct_row[who][k] - res[who][k])
            for who in ("lmscope", "circuit_tracer_way")
            for k in res[who]
        }
        res["circuit_tracer_code"] = ct_row
        res["max_abs_difference"] = max(diffs.values())
        print(json.dumps(ct_row, indent=1))
        print(
            "largest difference between lmscope and circuit-tracer's code: "
            f"{res['max_abs_difference']:.2e}"
        )
    res["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg": list(os.getloadavg()),
        "shared": True,
    }
    res["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

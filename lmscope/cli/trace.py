"""`lmscope trace`, `lmscope graph`, `lmscope steer`: link outputs to features and change them.

    lmscope trace atlas/ "The capital of France is" --target " Paris" --verify
    lmscope graph atlas/ "The capital of France is" --out paris.json
    lmscope steer atlas/ "I think dogs are" --feature blocks.15.resid_post/1234=+8 --generate 30
    lmscope steer atlas/ "I think dogs are" --vector "Love" "Hate" --layer 6 --coeff 5
    lmscope steer --model smollm2-135m "I think dogs are" --vector "Love" "Hate" --layer 6   # no
    atlas

Flags are generated from TraceConfig and GraphConfig (lmscope/trace/config.py) and SteerConfig
(lmscope/steer/plan.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import add_arguments, from_args
from ..errors import UserError
from ._common import print_json


def register(sub) -> None:
    from ..steer.plan import SteerConfig
    from ..trace.config import GraphConfig, TraceConfig

    p = sub.add_parser(
        "trace",
        help="the features that push the next token up or down (DLA, gradient x activation)",
        description="Rank the active features of every dictionary in the atlas by their effect on "
        "a "
        "target token at the last position: direct logit attribution (through the final "
        "norm with its scale frozen) and gradient x activation (all paths, first order). "
        "--verify ablates the top features (error term kept) and shows the actual change.",
    )
    add_arguments(p, TraceConfig, positional=("atlas", "prompt"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser(
        "graph",
        help="attribution graph through per-layer transcoders (circuit-tracer JSON)",
        description="Build the attribution graph of the next token: the replacement model "
        "(attention "
        "patterns and norm scales frozen on the prompt, transcoders in place of MLPs, error "
        "nodes keep it exact), direct effects from batched backward passes, pruned by "
        "influence. Needs a transcoder blocks.L.mlp_in -> blocks.L.mlp_out for every layer. "
        "Writes the JSON circuit-tracer's and Neuronpedia's graph viewers read.",
    )
    add_arguments(p, GraphConfig, positional=("atlas", "prompt"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "steer",
        help="generate with features clamped/scaled/ablated or a steering vector added",
        usage="lmscope steer [-h] [ATLAS] PROMPT [--feature HOOK/INDEX=V] [--vector POSITIVE "
        "NEGATIVE "
        "--layer L] [options]",
        description="Generate with and without interventions, side by side. Feature interventions "
        "keep "
        "the dictionary's error term (only the named features change): HOOK/INDEX=8 clamps, "
        "=+8 adds 8 x the decoder row, =*2 scales, =0 ablates. --vector POS NEG builds an "
        "ActAdd steering vector at blocks.LAYER.resid_pre (difference of the two prompts' "
        "residuals, added at the first positions) times --coeff. A steering vector needs "
        "no atlas: `lmscope steer --model M PROMPT --vector POS NEG --layer L`.",
    )
    add_arguments(p, SteerConfig, positional=("where",))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_steer)


# --- loading -------------------------------------------------------------------------
def load_atlas(
    atlas: str, *, model: str | None = None, device: str = "cpu", hooks: str | None = None
):
    """(LanguageModel, {hook: dictionary}, labels or None) from an atlas folder."""
    from ..dictionaries.folder import open_dictionaries

    folder, lm, dicts = open_dictionaries(atlas, hooks=hooks, model=model, device=device)
    return lm, dicts, _labels(folder.layout)


def _labels(layout):
    """A (hook, feature) -> label function reading the atlas DB (AtlasDB.label), or None without
    one."""
    from ..atlas.db import open_atlas_db

    db = open_atlas_db(layout)
    if db is None:
        return None

    def label(hook: str, feature: int) -> str:
        try:
            return db.label(hook, feature) or ""
        except UserError:  # a dictionary the DB has not profiled yet
            return ""

    return label


# --- commands ----------------------------------------------------------------------------
def cmd_trace(args) -> int:
    from ..trace import trace, verify
    from ..trace.config import TraceConfig

    cfg = from_args(TraceConfig, args)
    lm, dicts, labels = load_atlas(cfg.atlas, model=cfg.model, device=cfg.device, hooks=cfg.hooks)
    res = trace(
        lm,
        dicts,
        cfg.prompt,
        target=cfg.target,
        vs=cfg.vs,
        top=cfg.top,
        labels=labels,
        include_special=cfg.include_special,
    )
    if cfg.verify:
        verify(lm, dicts, res, top=cfg.verify_top)
    if args.json:
        print_json(res.to_dict())
        return 0
    what = f"logit({res.target!r}) - logit({res.vs!r})" if res.vs else f"logit({res.target!r})"
    print(
        f"{cfg.prompt!r} -> {res.target!r} (p={res.prob:.3f}); attributing {what} = {res.value:.3f}"
    )
    print(f"{'feature':<34} {'pos':>3} {'token':<12} {'act':>8} {'DLA':>9} {'grad*act':>9}  label")
    for f in res.features:
        print(
            f"{f.id:<34} {f.pos:>3} {f.token[:12]!r:<12} {f.activation:>8.3f} {f.dla:>+9.4f} "
            f"{f.grad_x_act:>+9.4f}  {f.label or '-'}"
        )
    if res.verification:
        print("\nablation (error term kept): change of the target")
        print(f"{'feature':<34} {'predicted':>10} {'actual':>10}")
        for v in res.verification:
            print(f"{v['id']:<34} {v['predicted']:>+10.4f} {v['actual']:>+10.4f}")
    return 0


def cmd_graph(args) -> int:
    from ..layout import write_json_atomic
    from ..trace import build_graph, check_transcoders, graph_json, prune
    from ..trace.config import GraphConfig
    from ..trace.graph_files import graphs_dir, save_graph

    cfg = from_args(GraphConfig, args)
    lm, dicts, labels = load_atlas(cfg.atlas, model=cfg.model, device=cfg.device)
    if cfg.clt:
        from ..dictionaries.clt import CrossLayerTranscoder

        tcs = CrossLayerTranscoder.load(cfg.clt, device=cfg.device)
        labels = None  # the atlas's labels describe its own dictionaries' features, not these
    else:
        tcs = check_transcoders(lm, dicts)
    g = build_graph(
        lm,
        tcs,
        cfg.prompt,
        target=cfg.target,
        max_feature_nodes=cfg.max_feature_nodes,
        batch_size=cfg.batch_size,
        max_memory_gb=cfg.max_memory_gb,
        row_edges=cfg.row_edges,
        progress=not args.json,
        log=lambda line: print(line, file=sys.stderr),
    )
    pruned = prune(g, cfg.node_threshold, cfg.edge_threshold)
    data = graph_json(
        g,
        pruned,
        labels=labels,
        node_threshold=cfg.node_threshold,
        edge_threshold=cfg.edge_threshold,
    )
    if cfg.out:
        out = Path(cfg.out)
        if out.exists() and not cfg.force:
            raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
        write_json_atomic(out, data)
    # the atlas's graphs/ folder, where `lmscope serve` lists them; a free name, never overwrites
    else:
        out = save_graph(data, graphs_dir(cfg.atlas))
    meta = data["metadata"]["lmscope"]
    summary = {
        "out": str(out),
        "target": g.logit_strs[0],
        "nodes": meta["n_nodes"],
        "links": meta["n_links"],
        "replacement_score": meta["replacement_score"],
        "completeness_score": meta["completeness_score"],
        "pruned_replacement_score": meta["pruned_replacement_score"],
        "pruned_completeness_score": meta["pruned_completeness_score"],
        "seconds": g.stats.get("seconds"),
        "active_features": meta["active_features"],
        "unexpanded_features": meta["unexpanded_features"],
        "unexpanded_fraction": meta["unexpanded_fraction"],
        "circuit_tracer_scores": meta["circuit_tracer_scores"],
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"graph of {cfg.prompt!r} -> {g.logit_strs[0]!r}: {summary['nodes']} nodes, "
        f"{summary['links']} links "
        f"({g.stats['active_features']} active features, {g.stats['seconds']:.1f} s)"
    )
    print(
        f"{meta['unexpanded_features']} of {meta['active_features']} active features "
        f"({meta['unexpanded_fraction']:.1%}) not expanded (over --max-feature-nodes): counted as "
        "error"
    )
    print(
        f"replacement score {meta['replacement_score']:.3f} (pruned "
        f"{meta['pruned_replacement_score']:.3f}), "
        f"completeness {meta['completeness_score']:.3f} (pruned "
        f"{meta['pruned_completeness_score']:.3f})"
    )
    ct = meta["circuit_tracer_scores"]
    print(
        f"as circuit-tracer computes them (unexpanded features dropped, pruned graph zeroed): "
        f"replacement {ct['replacement_score']:.3f} (pruned {ct['pruned_replacement_score']:.3f}), "
        f"completeness {ct['completeness_score']:.3f} (pruned "
        f"{ct['pruned_completeness_score']:.3f})"
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_steer(args) -> int:
    from ..steer import steer
    from ..steer.plan import SteerConfig

    cfg = from_args(SteerConfig, args)
    atlas, prompt = cfg.atlas, cfg.prompt
    if atlas is None:
        if cfg.feature:
            raise UserError(
                "--feature needs an atlas (its dictionaries): lmscope steer ATLAS PROMPT "
                "--feature ..."
            )
        if cfg.model is None:
            raise UserError(
                "without an atlas, pass --model M (alias, folder, hub id or .gguf) to steer with "
                "--vector"
            )
        from ..models import load_model

        lm, dicts = load_model(cfg.model, device=cfg.device), {}
    else:
        lm, dicts, _ = load_atlas(atlas, model=cfg.model, device=cfg.device)
    cmp = steer(
        lm,
        dicts,
        prompt,
        features=list(cfg.feature),
        vector=cfg.vector_spec(),
        max_new_tokens=cfg.generate,
        temperature=cfg.temperature,
        seed=cfg.seed,
        targets=list(cfg.target),
    )
    names = cmp.interventions
    if args.json:
        print_json(cmp.to_dict())
        return 0
    print(f"prompt: {prompt!r}")
    print("steering: " + "; ".join(names))
    print(f"\n  unsteered: {prompt}{cmp.unsteered}")
    print(f"  steered:   {prompt}{cmp.steered}")
    for title, rows in (("next token", cmp.targets), ("most likely next", cmp.next_tokens)):
        if rows:
            print(f"\n{title:<16} {'p unsteered':>12} {'p steered':>10}")
            for t in rows:
                print(f"{t['token']!r:<16} {t['p_unsteered']:>12.4f} {t['p_steered']:>10.4f}")
    return 0

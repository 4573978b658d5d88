"""`lmscope trace`, `lmscope graph`, `lmscope steer`: link outputs to features and change them.

    lmscope trace atlas/ "The capital of France is" --target " Paris" --verify
    lmscope graph atlas/ "The capital of France is" --out paris.json
    lmscope steer atlas/ "I think dogs are" --feature blocks.15.resid_post/1234=+8 --generate 30
    lmscope steer atlas/ "I think dogs are" --vector "Love" "Hate" --layer 6 --coeff 5
    lmscope steer --model smollm2-135m "I think dogs are" --vector "Love" "Hate" --layer 6   # no atlas
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ._common import print_json


def register(sub) -> None:
    p = sub.add_parser(
        "trace", help="the features that push the next token up or down (DLA, gradient x activation)",
        description="Rank the active features of every dictionary in the atlas by their effect on a "
                    "target token at the last position: direct logit attribution (through the final "
                    "norm with its scale frozen) and gradient x activation (all paths, first order). "
                    "--verify ablates the top features (error term kept) and shows the actual change.")
    _common(p)
    p.add_argument("--vs", default=None, help="attribute the logit difference target - VS (a single token)")
    p.add_argument("--top", type=int, default=20, help="features to show (default: 20)")
    p.add_argument("--hooks", default=None, help="only these dictionaries (names or globs, comma-separated)")
    p.add_argument("--verify", action="store_true",
                   help="ablate the top features one at a time and jointly; report actual vs predicted")
    p.add_argument("--verify-top", type=int, default=5, help="features to ablate with --verify (default: 5)")
    p.add_argument("--include-special", action="store_true",
                   help="also rank features at BOS/special-token positions (off-distribution for the dictionaries)")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser(
        "graph", help="attribution graph through per-layer transcoders (circuit-tracer JSON)",
        description="Build the attribution graph of the next token: the replacement model (attention "
                    "patterns and norm scales frozen on the prompt, transcoders in place of MLPs, error "
                    "nodes keep it exact), direct effects from batched backward passes, pruned by "
                    "influence. Needs a transcoder blocks.L.mlp_in -> blocks.L.mlp_out for every layer. "
                    "Writes the JSON circuit-tracer's and Neuronpedia's graph viewers read.")
    _common(p)
    p.add_argument("--out", default=None, help="JSON file to write (default: ATLAS/graphs/<slug>.json, or "
                   "<slug>-2.json, ... when taken; `lmscope serve ATLAS` lists that folder)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--node-threshold", type=float, default=0.8,
                   help="keep the nodes carrying this fraction of the influence on the logits (default: 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98,
                   help="keep the edges carrying this fraction of the influence (default: 0.98)")
    p.add_argument("--max-feature-nodes", type=int, default=4096,
                   help="compute incoming edges of at most this many features, most influential first; "
                        "the direct effects of the rest go into their error nodes (default: 4096)")
    p.add_argument("--batch-size", type=int, default=64, help="target nodes per backward pass (default: 64)")
    p.add_argument("--max-memory-gb", type=float, default=16.0,
                   help="refuse when the estimated memory exceeds this (default: 16)")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "steer", help="generate with features clamped/scaled/ablated or a steering vector added",
        usage="lmscope steer [-h] [ATLAS] PROMPT [--feature HOOK/INDEX=V] [--vector POSITIVE NEGATIVE "
              "--layer L] [options]",
        description="Generate with and without interventions, side by side. Feature interventions keep "
                    "the dictionary's error term (only the named features change): HOOK/INDEX=8 clamps, "
                    "=+8 adds 8 x the decoder row, =*2 scales, =0 ablates. --vector POS NEG builds an "
                    "ActAdd steering vector at blocks.LAYER.resid_pre (difference of the two prompts' "
                    "residuals, added at the first positions) times --coeff. A steering vector needs "
                    "no atlas: `lmscope steer --model M PROMPT --vector POS NEG --layer L`.")
    p.add_argument("where", nargs="+", metavar="[ATLAS] PROMPT",
                   help="atlas folder (needed for --feature; optional with --vector and --model) and the prompt")
    p.add_argument("--feature", action="append", default=[], metavar="HOOK/INDEX=V",
                   help="a feature intervention (repeatable): =8 clamp, =+8 add, =-8, =*2 scale, =0 ablate")
    p.add_argument("--vector", nargs=2, default=None, metavar=("POSITIVE", "NEGATIVE"),
                   help="contrastive prompts for a steering vector, e.g. --vector Love Hate")
    p.add_argument("--layer", type=int, default=None, help="layer of the steering vector (blocks.LAYER.<site>)")
    p.add_argument("--coeff", type=float, default=5.0, help="steering vector coefficient (default: 5)")
    p.add_argument("--vector-mode", choices=["actadd", "mean"], default="actadd",
                   help="actadd: position-wise difference added at the first positions (Turner et al. 2023); "
                        "mean: last-token difference added at every position (CAA-style)")
    p.add_argument("--site", choices=["resid_pre", "resid_post"], default="resid_pre",
                   help="where the steering vector is read and added (default: resid_pre)")
    p.add_argument("--generate", type=int, default=30, help="new tokens to generate (default: 30)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for both runs)")
    p.add_argument("--target", action="append", default=[], help="report this next token's probability "
                   "with and without the intervention (repeatable)")
    _model_flags(p, "override the atlas's model, or without an atlas the model to steer (alias, folder, "
                    "hub id, .gguf)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_steer)


def _model_flags(p, model_help: str = "override the atlas's model (alias, folder, hub id, .gguf)") -> None:
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _common(p) -> None:
    p.add_argument("atlas", help="atlas folder (holds the dictionaries)")
    p.add_argument("prompt", help="the prompt; the target is the token that follows it")
    p.add_argument("--target", default=None, help="the token to attribute, e.g. ' Paris' (default: the model's top token)")
    _model_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


# --- loading -------------------------------------------------------------------------
def load_atlas(atlas: str, *, model: str | None = None, device: str = "cpu", hooks: str | None = None):
    """(LanguageModel, {hook: dictionary}, labels or None) from an atlas folder."""
    from ..dictionaries.folder import open_dictionaries

    folder, lm, dicts = open_dictionaries(atlas, hooks=hooks, model=model, device=device)
    return lm, dicts, _labels(folder.layout)


def _labels(layout):
    """A (hook, feature) -> label function reading the atlas DB (AtlasDB.label), or None without one."""
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

    lm, dicts, labels = load_atlas(args.atlas, model=args.model, device=args.device, hooks=args.hooks)
    res = trace(lm, dicts, args.prompt, target=args.target, vs=args.vs, top=args.top, labels=labels,
                include_special=args.include_special)
    if args.verify:
        verify(lm, dicts, res, top=args.verify_top)
    if args.json:
        print_json(res.to_dict())
        return 0
    what = f"logit({res.target!r}) - logit({res.vs!r})" if res.vs else f"logit({res.target!r})"
    print(f"{args.prompt!r} -> {res.target!r} (p={res.prob:.3f}); attributing {what} = {res.value:.3f}")
    print(f"{'feature':<34} {'pos':>3} {'token':<12} {'act':>8} {'DLA':>9} {'grad*act':>9}  label")
    for f in res.features:
        print(f"{f.id:<34} {f.pos:>3} {f.token[:12]!r:<12} {f.activation:>8.3f} {f.dla:>+9.4f} "
              f"{f.grad_x_act:>+9.4f}  {f.label or '-'}")
    if res.verification:
        print("\nablation (error term kept): change of the target")
        print(f"{'feature':<34} {'predicted':>10} {'actual':>10}")
        for v in res.verification:
            print(f"{v['id']:<34} {v['predicted']:>+10.4f} {v['actual']:>+10.4f}")
    return 0


def cmd_graph(args) -> int:
    from ..atlas.layout import write_json_atomic
    from ..trace import build_graph, check_transcoders, graph_json, prune
    from ..trace.graph_files import graphs_dir, save_graph

    lm, dicts, labels = load_atlas(args.atlas, model=args.model, device=args.device)
    tcs = check_transcoders(lm, dicts)
    g = build_graph(lm, tcs, args.prompt, target=args.target, max_feature_nodes=args.max_feature_nodes,
                    batch_size=args.batch_size, max_memory_gb=args.max_memory_gb, progress=not args.json)
    pruned = prune(g, args.node_threshold, args.edge_threshold)
    data = graph_json(g, pruned, labels=labels, node_threshold=args.node_threshold,
                      edge_threshold=args.edge_threshold)
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
        write_json_atomic(out, data)
    else:  # the atlas's graphs/ folder, where `lmscope serve` lists them; a free name, never overwrites
        out = save_graph(data, graphs_dir(args.atlas))
    meta = data["metadata"]["lmscope"]
    summary = {"out": str(out), "target": g.logit_strs[0], "nodes": meta["n_nodes"], "links": meta["n_links"],
               "replacement_score": meta["replacement_score"], "completeness_score": meta["completeness_score"],
               "pruned_replacement_score": meta["pruned_replacement_score"],
               "pruned_completeness_score": meta["pruned_completeness_score"],
               "seconds": g.stats.get("seconds"), "active_features": meta["active_features"],
               "unexpanded_features": meta["unexpanded_features"],
               "unexpanded_fraction": meta["unexpanded_fraction"],
               "circuit_tracer_scores": meta["circuit_tracer_scores"]}
    if args.json:
        print_json(summary)
        return 0
    print(f"graph of {args.prompt!r} -> {g.logit_strs[0]!r}: {summary['nodes']} nodes, {summary['links']} links "
          f"({g.stats['active_features']} active features, {g.stats['seconds']:.1f} s)")
    print(f"{meta['unexpanded_features']} of {meta['active_features']} active features "
          f"({meta['unexpanded_fraction']:.1%}) not expanded (over --max-feature-nodes): counted as error")
    print(f"replacement score {meta['replacement_score']:.3f} (pruned {meta['pruned_replacement_score']:.3f}), "
          f"completeness {meta['completeness_score']:.3f} (pruned {meta['pruned_completeness_score']:.3f})")
    ct = meta["circuit_tracer_scores"]
    print(f"as circuit-tracer computes them (unexpanded features dropped, pruned graph zeroed): "
          f"replacement {ct['replacement_score']:.3f} (pruned {ct['pruned_replacement_score']:.3f}), "
          f"completeness {ct['completeness_score']:.3f} (pruned {ct['pruned_completeness_score']:.3f})")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_steer(args) -> int:
    from ..steer import VectorSpec, steer

    if len(args.where) > 2:
        raise UserError(f"steer takes [ATLAS] PROMPT, got {len(args.where)} positional arguments; "
                        "quote the prompt")
    atlas, prompt = (None, args.where[0]) if len(args.where) == 1 else args.where
    if not args.feature and not args.vector:
        raise UserError("nothing to steer with: pass --feature HOOK/INDEX=V and/or --vector POSITIVE NEGATIVE")
    if args.vector and args.layer is None:
        raise UserError("--vector needs --layer L (the steering vector is read and added at blocks.L.resid_pre)")
    if args.generate < 0:
        raise UserError("--generate must be >= 0")
    if atlas is None:
        if args.feature:
            raise UserError("--feature needs an atlas (its dictionaries): lmscope steer ATLAS PROMPT --feature ...")
        if args.model is None:
            raise UserError("without an atlas, pass --model M (alias, folder, hub id or .gguf) to steer with "
                            "--vector")
        from ..models import load_model

        lm, dicts = load_model(args.model, device=args.device), {}
    else:
        lm, dicts, _ = load_atlas(atlas, model=args.model, device=args.device)
    vector = None
    if args.vector:
        vector = VectorSpec(args.vector[0], args.vector[1], args.layer, args.coeff, args.vector_mode, args.site)
    cmp = steer(lm, dicts, prompt, features=args.feature, vector=vector, max_new_tokens=args.generate,
                temperature=args.temperature, seed=args.seed, targets=args.target)
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

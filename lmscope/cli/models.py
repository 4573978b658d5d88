"""`lmscope models` and `lmscope hooks`: what can be loaded, and its hook points."""

from __future__ import annotations

from ..models.registry import ALIASES, hub_cached_models
from ._common import add_model_flags, print_json


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the models that can be loaded offline",
        description="List model aliases (with whether their package is installed) and "
        "causal LMs in the local Hugging Face cache. Any local model folder or "
        ".gguf file works too: pass its path as --model.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "hooks",
        help="print every hook point of a model with its shape",
        description="Load the model and list its hook points (embed, blocks.L.resid_pre/"
        "attn_out/resid_mid/mlp_in/mlp_out/resid_post, ln_final) with the HF "
        "module each attaches to. Use the names with --hooks elsewhere; globs like "
        "'blocks.*.resid_post' work.",
    )
    add_model_flags(p, dtype=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_hooks)


def cmd_models(args) -> int:
    rows = []
    for alias, (finder, desc, hint) in ALIASES.items():
        f = finder(prepare=False)  # a listing never assembles or converts a model
        rows.append(
            {
                "name": alias,
                "kind": "alias",
                "available": f is not None,
                "path": str(f) if f else None,
                "description": desc,
                "install": None if f else hint,
            }
        )
    for repo in hub_cached_models():
        rows.append(
            {
                "name": repo,
                "kind": "hub-cache",
                "available": True,
                "path": None,
                "description": "in the local Hugging Face cache",
                "install": None,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        mark = "ok " if r["available"] else "-- "
        extra = r["description"] if r["available"] else f"not installed: {r['install']}"
        print(f"{mark} {r['name']:<28} {extra}")
    print("\nAlso: any local model folder or .gguf file (--model PATH), or a hub id when online.")
    return 0


def cmd_hooks(args) -> int:
    from ..models import load_model

    lm = load_model(args.model, device=args.device)
    rows = [
        {
            "name": n,
            "layer": hp.layer,
            "kind": hp.kind,
            "shape": ["batch", "pos", hp.d],
            "module": lm.hooks.module_name(n),
        }
        for n, hp in lm.hooks.points.items()
    ]
    if args.json:
        print_json(
            {"model": lm.name, "n_layers": lm.n_layers, "d_model": lm.d_model, "hooks": rows}
        )
        return 0
    print(f"{lm.name}: {lm.n_layers} blocks, d_model {lm.d_model}, {len(rows)} hook points")
    for r in rows:
        print(f"  {r['name']:<24} [batch, pos, {r['shape'][2]}]  {r['module']}")
    return 0

"""`lmscope pretrained list`: the published dictionaries lmscope knows how to load.

lmscope pretrained list                      # lmscope's table + SAELens's registry (if installed)
lmscope pretrained list --model gemma3-270m  # releases for one model
lmscope pretrained list --json
"""

from __future__ import annotations

from ._common import print_json


def register(sub) -> None:
    p = sub.add_parser(
        "pretrained",
        help="published dictionaries lmscope loads (Gemma Scope 2, circuit-tracer, sparsify, "
        "SAELens)",
    )
    psub = p.add_subparsers(dest="pretrained_command", metavar="ACTION")
    ls = psub.add_parser(
        "list",
        help="releases lmscope knows how to load, each with the command that loads it",
        description="A curated table of published releases (Gemma Scope 2 for gemma3-270m, "
        "circuit-tracer's transcoder sets and CLTs, sparsify checkpoints) and, when the "
        "sae_lens package is installed, SAELens's registry (marked origin 'sae_lens "
        "registry'). Each row gives the command that imports it: `lmscope atlas "
        "from-pretrained NAME --out atlas/`. Listing downloads nothing. docs/pretrained.md.",
    )
    ls.add_argument("--model", default=None, help="only releases for this model (alias or id)")
    ls.add_argument("--no-saelens", action="store_true", help="leave out SAELens's registry")
    ls.add_argument("--json", action="store_true", help="every row as JSON (with sae_ids)")
    ls.set_defaults(func=cmd_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_list(args) -> int:
    from ..dictionaries.io.releases import list_releases

    rows = list_releases(args.model, saelens=not args.no_saelens)
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    ours = [r for r in rows if r.origin == "lmscope"]
    theirs = [r for r in rows if r.origin != "lmscope"]
    if not rows:
        print(f"no known release for model {args.model!r}")
        return 0
    for r in ours:
        state = "" if r.loads else f"  [not loadable yet: {r.note}]"
        note = f"  ({r.note})" if r.note and r.loads else ""
        print(f"{r.name}{state}")
        print(f"    {r.kind}, {r.hooks}, layers {r.layers}, width {r.widths}, {r.layout}{note}")
        print(f"    model {r.model}; licence: {r.licence}")
        print(f"    from {r.source}")
        if r.loads:
            print(f"    $ {r.command}")
    if theirs:
        print(
            f"\n{len(theirs)} releases from SAELens's registry (sae_lens package); import one SAE "
            "with `lmscope atlas from-pretrained RELEASE --sae-id SAE_ID --out atlas/ --model M` "
            "(--json lists the sae_ids):"
        )
        for r in theirs:
            print(f"  {r.name:<48} {len(r.sae_ids):>5} SAEs  {r.model}  ({r.source})")
    return 0

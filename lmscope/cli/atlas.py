"""`lmscope atlas build`, `lmscope feature`, `lmscope search`, `lmscope export`.

lmscope atlas build atlas/ --corpus corpus.txt --tokens 1M
torchrun --nproc-per-node 2 -m lmscope atlas build atlas/ --corpus corpus.txt --tokens 1M
lmscope feature atlas/ blocks.15.resid_post/1234
lmscope search atlas/ "horse" --by both
lmscope export atlas/ --format neuronpedia-json --out np/
"""

from __future__ import annotations

import sys

from ..config import add_arguments, from_args
from ..errors import UserError
from ._common import print_json


def register(sub) -> None:
    from ..atlas.build import BuildConfig

    p = sub.add_parser("atlas", help="profile every feature of an atlas (build the atlas database)")
    asub = p.add_subparsers(dest="atlas_command", metavar="ACTION")
    b = asub.add_parser(
        "build",
        help="one streaming pass over a corpus: stats, examples, logit effects -> atlas.db",
        description="Stream a corpus through the model and every dictionary once, keep bounded "
        "per-feature profiles (density, max/mean, histogram, top-K contexts, samples per "
        "activation octave, non-activating contexts, logit effects) and write them to "
        "ATLAS/atlas.db. Resumable: rerun the same command after an interruption.",
    )
    add_arguments(b, BuildConfig, positional=("atlas",))
    b.add_argument("--json", action="store_true", help="print the build result as JSON")
    b.set_defaults(func=cmd_build)

    fp = asub.add_parser(
        "from-pretrained",
        help="published transcoders/CLTs (circuit-tracer, Gemma Scope 2, ...) -> lmscope files",
        description="Load published dictionaries from a release name (`lmscope pretrained "
        "list`), a SAELens registry release with --sae-id, a local folder or a Hugging Face "
        "reference (org/repo[/folder][@revision], read from the local HF cache when "
        "HF_HUB_OFFLINE=1), map their hook names to lmscope's, check their widths against the "
        "model, and write them as lmscope files: per-layer transcoders/SAEs become an atlas "
        "every command reads; a cross-layer transcoder becomes an lmscope CLT folder. A SOURCE "
        "with {layer} names one folder per layer. docs/pretrained.md.",
    )
    fp.add_argument(
        "source",
        help="release name, folder or HF reference, e.g. "
        "gemma-scope-2-270m-pt-transcoders-16k-small-affine or ./ct-export",
    )
    fp.add_argument(
        "--sae-id",
        default=None,
        help="with a SAELens registry release: which of its SAEs (its sae_id)",
    )
    fp.add_argument("--out", required=True, help="output atlas (or CLT) folder")
    fp.add_argument(
        "--model",
        default=None,
        help="model the dictionaries belong to (default: the one the files name)",
    )
    fp.add_argument("--force", action="store_true", help="write into a non-empty --out")
    fp.add_argument("--json", action="store_true", help="print what was written as JSON")
    fp.set_defaults(func=cmd_from_pretrained)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    f = sub.add_parser(
        "feature", help="one feature's profile: stats, histogram, examples, promoted tokens"
    )
    f.add_argument("atlas", help="atlas folder")
    f.add_argument("feature", help="HOOK/INDEX, e.g. blocks.15.resid_post/1234")
    f.add_argument("--top", type=int, default=10, help="top examples shown (default: 10)")
    f.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="ANSI highlighting (default: auto = when stdout is a terminal)",
    )
    f.add_argument("--json", action="store_true", help="the whole profile as JSON")
    f.set_defaults(func=cmd_feature)

    s = sub.add_parser(
        "search", help="find features by label/explanation (full text) or by text they fire on"
    )
    s.add_argument("atlas", help="atlas folder")
    s.add_argument("query", help="words to look up in labels, or text to run through the model")
    s.add_argument(
        "--by",
        choices=["label", "text", "both"],
        default="both",
        help="label: full-text over labels and explanations; text: run the query through the "
        "model and "
        "rank features by activation (default: both)",
    )
    s.add_argument("--limit", type=int, default=20, help="results per kind (default: 20)")
    s.add_argument("--device", default="cpu", help="torch device for --by text (default: cpu)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_search)

    e = sub.add_parser(
        "export", help="write the atlas for other tools (SAELens, Neuronpedia, parquet)"
    )
    e.add_argument("atlas", help="atlas folder")
    e.add_argument(
        "--format",
        required=True,
        choices=["saelens", "neuronpedia-json", "parquet", "circuit-tracer"],
        help="saelens folders, Neuronpedia upload JSON, parquet tables, or circuit-tracer "
        "transcoder files (ATLAS may then be a CLT folder)",
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--force", action="store_true", help="write into a non-empty --out")
    e.add_argument("--json", action="store_true", help="list the written files as JSON")
    e.set_defaults(func=cmd_export)


def cmd_build(args) -> int:
    from dataclasses import asdict

    from ..atlas.build import BuildConfig, build_atlas

    try:
        cfg = from_args(BuildConfig, args)
    except ValueError as err:
        raise UserError(str(err)) from None
    res = build_atlas(cfg, progress=not args.json)
    if args.json:
        print_json(asdict(res))
    elif not res.skipped:
        print(
            f"profiled {len(res.hooks)} dictionaries on {res.n_tokens:,} tokens in "
            f"{res.seconds:.1f}s -> "
            f"{res.atlas}/atlas.db"
        )
    return 0


def cmd_from_pretrained(args) -> int:
    from ..dictionaries.io.pretrained import (
        import_pretrained,
        resolve_source,
        source_model_name,
    )
    from ..models import load_model

    source, release_model = resolve_source(args.source, args.sae_id)
    # The files' configs first (cheap; offline, an uncached source fails here, before the model
    # loads): they name their model when neither --model nor the release does.
    named = source_model_name(source)
    model = args.model or release_model or named
    if not model:
        raise UserError(f"{args.source} does not name its model; pass --model")
    lm = load_model(model)
    pre, out = import_pretrained(source, args.out, lm, force=args.force)
    what = {
        "out": str(out),
        "format": pre.fmt,
        "model": lm.name,
        "kind": "clt" if pre.clt is not None else "atlas",
        "dictionaries": sorted(pre.dictionaries),
    }
    if pre.clt is not None:
        c = pre.clt.cfg
        what.update(n_layers=c.n_layers, d_sae=c.d_sae, arch=c.arch)
    if args.json:
        print_json(what)
    elif pre.clt is not None:
        print(
            f"cross-layer transcoder ({pre.fmt}): {c.n_layers} layers x {c.d_sae} features "
            f"-> {out} (lmscope CLT folder)"
        )
    else:
        print(f"{len(pre.dictionaries)} dictionaries ({pre.fmt}) -> atlas {out}")
    return 0


def _open_db(atlas: str):
    from ..atlas.db import open_atlas_db
    from ..layout import AtlasLayout

    layout = AtlasLayout(atlas)
    layout.read()
    return open_atlas_db(layout, required=True)


def cmd_feature(args) -> int:
    from ..atlas.dashboard import render
    from ..atlas.feature_page import from_db
    from ..dictionaries.feature_id import parse_feature_id

    hook, idx = parse_feature_id(args.feature)
    with _open_db(args.atlas) as db:
        if args.json:
            print_json(from_db(db, hook, idx).to_dict())
            return 0
        prof = db.feature(hook, idx)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render(prof, color=color, n_top=args.top))
    return 0


def cmd_search(args) -> int:
    from dataclasses import asdict

    from ..atlas.search import search_text

    if args.limit < 1:
        raise UserError("--limit must be >= 1")
    out: dict = {}
    if args.by in ("label", "both"):
        from ..layout import AtlasLayout

        if AtlasLayout(args.atlas).db_path.exists() or args.by == "label":
            with _open_db(args.atlas) as db:
                out["labels"] = [asdict(h) for h in db.search_labels(args.query, args.limit)]
        else:
            out["labels"] = []
    if args.by in ("text", "both"):
        out["text"] = [
            asdict(h)
            for h in search_text(args.atlas, args.query, limit=args.limit, device=args.device)
        ]
    if args.json:
        print_json(out)
        return 0
    if "labels" in out:
        print(
            f"labels and explanations matching {args.query!r}:"
            if out["labels"]
            else f"no label or explanation matches {args.query!r}"
        )
        for h in out["labels"]:
            print(f"  {h['hook']}/{h['feature']:<6} [{h['source']}] {h['text']}")
    if "text" in out:
        print(
            f"features firing on {args.query!r}:"
            if out["text"]
            else f"no feature fires on {args.query!r}"
        )
        for h in out["text"]:
            rel = f" ({h['relative']:.0%} of its max)" if h.get("relative") else ""
            lab = f'  "{h["label"]}"' if h.get("label") else ""
            print(
                f"  {h['hook']}/{h['feature']:<6} {h['max_act']:8.3f}{rel} on {h['token']!r}{lab}"
            )
    return 0


def cmd_export(args) -> int:
    from ..atlas.export import export_atlas

    files = export_atlas(args.atlas, args.format, args.out, force=args.force)
    if args.json:
        print_json([str(f) for f in files])
    else:
        print(f"wrote {len(files)} files to {args.out}")
    return 0

"""`lmscope scan`: read a prompt through every dictionary of an atlas.

    lmscope scan atlas/ "The horse galloped across the field"
    lmscope scan atlas/ "The horse galloped" --png scan.png --html scan.html
    lmscope scan atlas/ "I love dogs" --vs "I hate dogs"
    lmscope scan atlas/ "The horse galloped" --json
"""

from __future__ import annotations

from ..errors import UserError
from ._common import print_json


def register(sub) -> None:
    p = sub.add_parser(
        "scan", help="which features light up on a prompt, where in the model, and what they mean",
        description="Run a prompt through the model and every dictionary of the atlas: per token the "
                    "top features of each dictionary with labels and activations, and a brain map "
                    "(dictionaries x tokens heatmap of feature activity, normalized per dictionary).")
    p.add_argument("atlas", help="atlas folder")
    p.add_argument("prompt", help="the text to scan")
    p.add_argument("--vs", default=None, metavar="PROMPT_B",
                   help="also list the features whose max activation differs most from PROMPT_B")
    p.add_argument("--top", type=int, default=5, help="features per token and dictionary (default: 5)")
    p.add_argument("--show", type=int, default=3, help="features per token printed in the terminal (default: 3)")
    p.add_argument("--hooks", default=None, help="only these dictionaries (names or globs, comma-separated)")
    p.add_argument("--png", default=None, metavar="FILE", help="write the brain map as a PNG heatmap")
    p.add_argument("--html", default=None, metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--force", action="store_true", help="overwrite existing --png/--html files")
    p.add_argument("--max-tokens", type=int, default=256, help="refuse longer prompts (default: 256)")
    p.add_argument("--model", default=None, help="override the atlas's model (same architecture)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="ANSI colors in the brain map (default: auto = when stdout is a terminal)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is faster on a busy shared CPU)")
    p.add_argument("--json", action="store_true", help="machine-readable output (the ScanResult)")
    p.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    from pathlib import Path

    from ..read import Reader, compare, render_compare, render_png, render_scan, write_html

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    for flag in ("png", "html"):
        path = getattr(args, flag)
        if path and Path(path).exists() and not args.force:
            raise UserError(f"--{flag} {path} exists; pass --force to overwrite it")
    reader = Reader.open(args.atlas, model=args.model, device=args.device, hooks=args.hooks,
                         max_tokens=args.max_tokens)
    res = reader.scan(args.prompt, top_k=args.top)
    cmp = compare(reader, args.prompt, args.vs, top=20) if args.vs is not None else None
    if args.png:
        render_png(res, args.png)
    if args.html:
        write_html(res, args.html, cmp)
    if args.json:
        out = res.to_dict()
        if cmp is not None:
            out["vs"] = cmp.to_dict()
        print_json(out)
        return 0
    color = {"auto": None, "always": True, "never": False}[args.color]
    print(render_scan(res, color=color, per_token=args.show))
    if cmp is not None:
        print()
        print(render_compare(cmp))
    for flag in ("png", "html"):
        if getattr(args, flag):
            print(f"wrote {getattr(args, flag)}")
    return 0

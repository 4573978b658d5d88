"""`lmscope scan`: read a prompt through every dictionary of an atlas.

    lmscope scan atlas/ "The horse galloped across the field"
    lmscope scan atlas/ "The horse galloped" --png scan.png --html scan.html
    lmscope scan atlas/ "I love dogs" --vs "I hate dogs"
    lmscope scan atlas/ "The horse galloped" --json

Flags are generated from ScanConfig (lmscope/read/scan_config.py).
"""

from __future__ import annotations

from ..config import add_arguments, from_args
from ..errors import UserError
from ._common import print_json


def register(sub) -> None:
    from ..read.scan_config import ScanConfig

    p = sub.add_parser(
        "scan",
        help="which features light up on a prompt, where in the model, and what they mean",
        description="Run a prompt through the model and every dictionary of the atlas: per token "
        "the top features of each dictionary with labels and activations, and a brain map "
        "(layers x tokens heatmap of feature activity against each layer's mean over the atlas "
        "corpus, with each layer's fit = 1 - FVU on the prompt). With --vs, also the features "
        "that differ most and a diff map (layers x positions: share of features changed).",
    )
    add_arguments(p, ScanConfig, positional=("atlas", "prompt"))
    p.add_argument("--json", action="store_true", help="machine-readable output (the ScanResult)")
    p.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:

    from ..read.scan_config import ScanConfig

    cfg = from_args(ScanConfig, args)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:  # restored after: `lmscope run` calls scan in-process and then builds a graph
        return _scan(cfg, args)
    finally:
        torch.set_num_threads(before)


def _scan(cfg, args) -> int:
    from pathlib import Path

    from ..read import Reader, compare, render_diff, render_png, render_scan, write_html

    for flag in ("png", "html"):
        path = getattr(cfg, flag)
        if path and Path(path).exists() and not cfg.force:
            raise UserError(f"--{flag} {path} exists; pass --force to overwrite it")
    reader = Reader.open(
        cfg.atlas, model=cfg.model, device=cfg.device, hooks=cfg.hooks, max_tokens=cfg.max_tokens
    )
    res = reader.scan(cfg.prompt, top_k=cfg.top)
    cmp = compare(reader, cfg.prompt, cfg.vs, top=20) if cfg.vs is not None else None
    if cfg.png:
        render_png(res, cfg.png, cmp)
    if cfg.html:
        write_html(res, cfg.html, cmp)
    if args.json:
        out = res.to_dict()
        if cmp is not None:
            out["vs"] = cmp.to_dict()
        print_json(out)
        return 0
    color = {"auto": None, "always": True, "never": False}[cfg.color]
    print(render_scan(res, color=color, per_token=cfg.show))
    if cmp is not None:
        print()
        print(render_diff(cmp, color=color))
    for flag in ("png", "html"):
        if getattr(cfg, flag):
            print(f"wrote {getattr(cfg, flag)}")
    return 0

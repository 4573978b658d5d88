"""`lmscope train` and `lmscope eval`: learn sparse dictionaries, then measure them.

    lmscope train --model smollm2-135m --hooks 'blocks.*.resid_post' --arch topk --width 16x --k 32
    \\
        --tokens 2M --out atlas/
    torchrun --nproc-per-node 4 -m lmscope train ... [--shard-features]
    lmscope eval atlas/ --tokens 100k [--train-tokens 100k] [--json]
    lmscope eval atlas/ --tokens 8k --splice-tokens 2k --model-dtype auto --no-baselines

Flags of `train` are generated from TrainConfig (lmscope/dictionaries/train_config.py).
Ctrl-C saves a checkpoint and exits 130; the same command resumes it.
"""

from __future__ import annotations

import sys

from ..config import add_arguments, from_args
from ._common import print_json


def register(sub) -> None:
    from ..dictionaries.evaluate import EvalConfig
    from ..dictionaries.train_config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train sparse dictionaries (SAEs / transcoders) on a model's activations",
        description="Train one sparse dictionary per hook point, all from the same model passes "
        "(or from an activation store with --from-store). Writes SAELens-format folders "
        "into OUT/dictionaries/<hook>/ and lists them in OUT/atlas.json. Ctrl-C saves a "
        "checkpoint; run the same command to resume. Multi-process: "
        "torchrun --nproc-per-node N -m lmscope train ... [--shard-features]. "
        "--clt trains one cross-layer transcoder over layers 0..L-1 instead "
        "(OUT/dictionaries/clt/; docs/scaling.md has its memory formula).",
    )
    add_arguments(p, TrainConfig)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate an atlas's dictionaries: FVU, L0, dead/dense latents, spliced LM loss",
        description="For every dictionary in ATLAS, on held-out text (documents it was not "
        "trained on: "
        "checked against the documents its training recorded): the loss added by splicing "
        "the reconstruction in at its hook (nats per token) and KL(clean || spliced), with "
        "bootstrap intervals; FVU with and without the few massive-norm tokens; L0, dead and "
        "dense fractions; loss recovered against mean- and zero-ablation. Several dictionaries "
        "(e.g. a transcoder per layer) print as one table by layer. Writes ATLAS/eval.json, a "
        "feature-density histogram per dictionary and, for several layers, "
        "ATLAS/plots/eval_by_layer.png (needs the 'plot' extra). Whole model, fast: "
        "--model-dtype auto --no-baselines --splice-tokens N. What each number is computed on: "
        "docs/measuring.md.",
    )
    add_arguments(p, EvalConfig, positional=("atlas",))
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_train(args) -> int:
    from .. import dist
    from ..dictionaries.train_config import TrainConfig
    from ..dictionaries.trainer import Interrupted, train

    cfg = from_args(TrainConfig, args)
    info = dist.env_info()
    try:
        res = train(cfg)
    except Interrupted as e:
        if info.is_main:
            print(
                f"\nlmscope: interrupted at step {e.step}; checkpoint saved in {cfg.out}/train. "
                "Run the same command to resume.",
                file=sys.stderr,
            )
        return 130
    if not info.is_main:
        return 0
    rows = {h: {"path": str(p), **res.metrics[h].__dict__} for h, p in res.dictionaries.items()}
    if args.json:
        print_json(
            {
                "out": str(res.out),
                "steps": res.steps,
                "tokens": res.tokens,
                "seconds": res.seconds,
                "tokens_per_s": res.tokens / max(res.seconds, 1e-9),
                "dictionaries": rows,
            }
        )
        return 0
    print(
        f"trained {len(rows)} dictionar{'y' if len(rows) == 1 else 'ies'} on {res.tokens:,} tokens "
        f"in {res.seconds:.0f}s ({res.tokens / max(res.seconds, 1e-9):,.0f} tok/s) -> {res.out}"
    )
    for h, r in rows.items():  # a CLT is one row: FVU and L0 averaged over its layers
        print(
            f"  {h:<24} FVU {r['fvu']:.3f}  L0 {r['l0']:.1f}  dead {r['dead_frac']:.1%}  "
            f"{r['path']}"
        )
    # Say what this FVU is: held-out numbers (pooled, with and without norm outliers) come from
    # eval.
    print(
        "(FVU: mean of per-batch FVUs over the last 10% of steps, in-sample; held-out: lmscope "
        "eval)"
    )
    if cfg.clt:
        # `lmscope eval` measures the per-layer dictionaries of atlas.json; a CLT is listed
        # under "clts" and is opened with the class.
        print(
            "load it: from lmscope.dictionaries.clt import CrossLayerTranscoder; "
            f"CrossLayerTranscoder.load({str(rows['clt']['path'])!r})"
        )
        return 0
    from ._invocation import shell_line

    print(f"next: {shell_line(['eval', str(res.out)])}")
    return 0


def cmd_eval(args) -> int:
    from ..dictionaries.evaluate import EvalConfig, evaluate_atlas, format_report

    cfg = from_args(EvalConfig, args)
    report = evaluate_atlas(cfg)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0

"""`lmscope diagnose` and `lmscope fix`: from a described bug to a measured, exportable repair."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import add_arguments, from_args
from ..errors import UserError
from ._common import print_json

FIX_EPILOG = """\
A bug file is JSONL, one object per line: {"prompt": ..., "bad": ..., "good": ...}, optional
"group" (lines of a group stay on one side of the split) and "chat": true (use the chat
template). lmscope splits it into fit and held-out prompts, chooses an edit on the fit ones
within a side-effect budget, and reports it on the held-out ones next to a random control edit.

examples:
  lmscope fix examples/bugs/capitals.jsonl
  lmscope fix bugs.jsonl --layers 6,12,18 --max-added-nats 0.02 --export fixed-model
  lmscope diagnose bugs.jsonl --json
"""


def register(sub) -> None:
    from ..correct.fix_config import FixConfig

    p = sub.add_parser(
        "fix",
        help="repair a bug described as prompts: choose an edit, measure it, export the model",
        description=FixConfig.__doc__,
        epilog=FIX_EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    add_arguments(p, FixConfig, positional=("bugs",))
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_fix)

    d = sub.add_parser(
        "diagnose",
        help="rank the edits that drive a bug's behaviour on its fit prompts (no held-out report)",
        description="Contrastive directions per layer from the bug file's fit prompts, each "
        "verified by projecting it out and by steering against it; best first.",
        epilog=FIX_EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    add_arguments(
        d,
        FixConfig,
        positional=("bugs",),
        exclude=("export", "force", "out", "max_added_nats", "top", "examples", "example_tokens"),
    )
    d.add_argument("--json", action="store_true", help="print the ranking as JSON")
    d.set_defaults(func=cmd_diagnose)


def _load(cfg):
    """(model, {hook: dictionary} or None, labels or None)."""
    from ..dictionaries.evaluate import model_dtype
    from ..models import load_model

    lm = load_model(cfg.model, dtype=model_dtype(cfg), device=cfg.device)
    if not cfg.atlas:
        return lm, None, None
    from ..dictionaries.folder import open_dictionaries
    from .trace import _labels

    folder, lm, dicts = open_dictionaries(
        cfg.atlas, hooks=cfg.atlas_hooks, lm=lm, device=cfg.device
    )
    return lm, dicts, _labels(folder.layout)


def _print_features(rows) -> None:
    if not rows:
        return
    print("features that push toward the bad continuation (fit prompts; ablation = measured):")
    for r in rows:
        eff = "" if r["ablation_effect"] is None else f"{r['ablation_effect']:+.3f}"
        print(
            f"  {r['id']:26} attribution {r['attribution']:+.3f}  ablation {eff:>7}  "
            f"{r['label'][:60]}"
        )


def _print_truth(tps) -> None:
    for t in tps:
        acc = "" if t["val_acc"] is None else f", validation accuracy {t['val_acc']:.3f}"
        print(f"truth probe at {t['hook']}: {t['source']}{acc}; true-false gap {t['gap']:.2f}")


def cmd_diagnose(args) -> int:
    from ..correct.fix import Behaviour, _diagnose, fit_and_heldout, general_text, parse_layers
    from ..correct.fix_config import FixConfig

    cfg = from_args(FixConfig, args)
    fit, _ = fit_and_heldout(cfg)  # checked before the model loads
    lm, dicts, labels = _load(cfg)
    beh = Behaviour(cfg)
    text = general_text(lm, cfg, "train") if cfg.gated and beh.scorer is None else None
    before, cands, findings, _, tps = _diagnose(
        lm, cfg, beh, fit, parse_layers(lm, cfg.layers), dicts, labels, text
    )
    feats = [f.to_dict() for f in findings]
    nan = float("nan")
    rows = [
        {
            "edit": c.name,
            "kind": c.kind,
            "layer": c.layer,
            "fit_margin": c.fit_margin,
            "fit_bad_rate": None if c.fit_bad_rate != c.fit_bad_rate else c.fit_bad_rate,
        }
        for c in cands
    ]
    bad_before = float(beh.bad(before).double().mean())
    score = (
        "mean margin log p(bad) - log p(good)"
        if beh.scorer is None
        else ("proxy: change in log p/token of the flagged minus the good generations")
    )
    if args.json:
        print_json(
            {
                "fit_prompts": len(fit),
                "behaviour": "margin" if beh.scorer is None else f"scorer:{beh.scorer}",
                "fit_value_before": float(before.mean()),
                "fit_bad_rate_before": bad_before,
                "ranked_by": score,
                "features": feats,
                "truth_probes": [tp.to_dict() for tp in tps],
                "candidates": rows,
            }
        )
        return 0
    print(f"{len(fit)} fit prompts; bad rate before {bad_before:.2f}; candidates ranked by {score}")
    _print_features(feats)
    _print_truth([tp.to_dict() for tp in tps])
    print(f"{'edit':44} {'kind':20} {'score':>10} {'bad rate':>8}")
    shown = (
        rows[:15]
        + [  # the best of each kind too, so every family is seen
            next(r for r in rows if r["kind"] == k)
            for k in dict.fromkeys(r["kind"] for r in rows)
            if not any(r["kind"] == k for r in rows[:15])
        ]
    )
    for r in shown:
        br = r["fit_bad_rate"]
        print(
            f"{r['edit'][:44]:44} {r['kind']:20} {r['fit_margin']:+10.3f} "
            f"{nan if br is None else br:8.2f}"
        )
    print("Fit-prompt numbers; `lmscope fix` chooses one and judges it on held-out prompts.")
    return 0


def cmd_fix(args) -> int:
    from ..correct.export import export
    from ..correct.fix import card, fit_and_heldout, run_fix
    from ..correct.fix_config import FixConfig
    from ..correct.weights import fold
    from ..layout import write_json_atomic

    cfg = from_args(FixConfig, args)
    fit_and_heldout(cfg)  # a malformed file fails in milliseconds, before the model loads
    for path, what in ((cfg.export, "--export"), (cfg.out, "--out")):
        if path and Path(path).exists() and not cfg.force:
            raise UserError(f"{what} {path} already exists; choose another path or pass --force")
    lm, dicts, labels = _load(cfg)
    report, edit = run_fix(lm, cfg, dictionaries=dicts, labels=labels, progress=not args.json)
    exported = None
    if cfg.export and edit is not None:
        exported = str(
            export(fold(lm, edit), cfg.export, card(report), edits=edit, force=cfg.force)
        )
    d = report.to_dict() | {"export": exported}
    if cfg.out:
        write_json_atomic(cfg.out, d)
    saved = None
    if cfg.atlas:  # the viewer's Fixes page lists ATLAS/fixes/ (never overwritten: a free name)
        from ..correct.fix_files import save_fix

        saved = str(save_fix(d, cfg.atlas, Path(cfg.bugs).stem))
        d["saved"] = saved
    if args.json:
        print_json(d)
        return 0
    _print(report, exported)
    if saved:
        from ._invocation import shell_line

        print(f"report saved to {saved}; see it with: {shell_line(['serve', cfg.atlas])} (Fixes)")
    return 0


def _print(r, exported) -> None:
    print(f"bug file {r.bugs}: {r.n_fit} fit prompts, {r.n_heldout} held-out prompts")
    _print_features(r.features)
    _print_truth(r.truth_probes)
    before = f"{r.fit_before_margin:+.3f}"
    print(f"candidates (fit prompts; mean margin, lower is better; before {before}):")
    for c in r.candidates[:10]:
        nats = "" if c["fit_added_nats"] is None else f"  +{c['fit_added_nats']:.4f} nats"
        bad = "-" if c["fit_bad_rate"] is None else f"{c['fit_bad_rate']:.2f}"
        print(f"  {c['name'][:44]:44} {c['kind']:20} {c['fit_margin']:+.3f}  bad {bad}{nats}")
    if r.fix is None:
        print(f"no fix: {r.note}")
        return
    from ..correct.fix import table_rows

    if r.status != "chosen":
        print(f"no fix: {r.note}")
        print(f"NOT CHOSEN (failed on fit), shown for reference: {r.fix.edit}")
    else:
        print(f"chosen: {r.fix.edit}")
    head = ("held-out prompts and text", "before", "after the fix", "control edit")
    print(f"{head[0]:26} {head[1]:>22} {head[2]:>22} {head[3]:>22}")
    for name, *cells in table_rows(r):
        print(f"  {name:24} " + " ".join(f"{x:>22}" for x in cells))
    print(
        f"  ({r.fix.text.tokens:,} held-out text tokens; intervals: 95% bootstrap over prompt "
        "groups / contexts)"
    )
    if r.knowledge_splits != "all" and r.fix.knowledge:
        print(
            "  (knows: validation and test entities only; the truth probe was fitted on the "
            "train entities)"
        )
    if exported:
        print(f"repaired model written to {exported} (loads with transformers' from_pretrained)")
    else:
        print("add --export DIR to write the repaired model", file=sys.stderr)

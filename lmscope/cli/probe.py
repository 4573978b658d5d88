"""`lmscope probe ...` and `lmscope lie-check`: truth probes and a lie detector.

    lmscope probe datasets
    lmscope probe train --model smollm2-135m --dataset cities,larger_than --layers all --out truth_probe
    lmscope probe eval --probe truth_probe --dataset neg_cities,smaller_than
    lmscope probe eval --model smollm2-135m --train cities,neg_cities,larger_than --layer 12 --dataset all
    lmscope probe lies --probe truth_probe            # lie detection on the model's own answers
    lmscope probe explain --probe truth_probe atlas/
    lmscope lie-check --probe truth_probe "Q: What is the capital of France? A: Berlin."
"""

from __future__ import annotations

import sys

from ..errors import UserError
from ._common import add_model_flags, print_json


def register(sub) -> None:
    p = sub.add_parser("probe", help="truth probes: datasets, per-layer training, generalization, atlas links",
                       description="Linear probes that read what the model internally holds true "
                                   "(logistic regression, mass-mean, CCS), trained per layer on built-in "
                                   "true/false statement sets split by entity.")
    ps = p.add_subparsers(dest="probe_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    d = ps.add_parser("datasets", help="list the built-in true/false statement sets with sizes")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_datasets)

    t = ps.add_parser("train", help="fit probes at each layer; print held-out accuracy per layer; save the best")
    add_model_flags(t)
    t.add_argument("--dataset", default="cities,neg_cities,larger_than,smaller_than",
                   help="comma-separated sets pooled for training, or 'all' (default: cities,neg_cities,"
                        "larger_than,smaller_than)")
    t.add_argument("--layers", default="all", help="'all' (every resid_post), layer numbers '8,12' or hook names")
    t.add_argument("--kinds", default="logistic,massmean,ccs",
                   help="probe types to fit: logistic, massmean, massmean_iid, ccs (default: logistic,massmean,ccs)")
    t.add_argument("--save-kind", default="logistic", help="which type to save at its best layer (default: logistic)")
    t.add_argument("--out", default="truth_probe", help="probe folder to write (default: truth_probe)")
    t.add_argument("--png", default=None, help="accuracy-per-layer curve (default: OUT/accuracy.png; 'none' to skip)")
    t.add_argument("--batch-size", type=int, default=32, help="statements per forward pass (default: 32)")
    t.add_argument("--force", action="store_true", help="overwrite an existing --out")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_train)

    e = ps.add_parser("eval", help="generalization: a train x test accuracy matrix on held-out entities")
    e.add_argument("--probe", default=None, help="probe folder(s), comma-separated (rows of the matrix)")
    e.add_argument("--train", default=None, help="instead of --probe: fit one probe per set here (rows)")
    e.add_argument("--layer", default=None, help="with --train: the layer number or hook to probe")
    e.add_argument("--kind", default="logistic", help="with --train: probe type (default: logistic)")
    e.add_argument("--dataset", default="all", help="test sets (columns), comma-separated or 'all'")
    e.add_argument("--model", default=None, help="model (default: the probe's own)")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_eval)

    lies = ps.add_parser("lies", help="lie detection on the model's own honest vs instructed-lie answers")
    lies.add_argument("--probe", required=True, help="probe folder")
    lies.add_argument("--model", default=None, help="model (default: the probe's own)")
    lies.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    lies.add_argument("--limit", type=int, default=0, help="only the first N cities (default: all)")
    lies.add_argument("--max-new-tokens", type=int, default=20,
                      help="answer length limit in tokens (default: 20; answers are cut at the first newline or "
                           "sentence end)")
    lies.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default: 16)")
    lies.add_argument("--set-threshold", action="store_true",
                      help="store the threshold set on honest control answers in the probe (for lie-check; "
                           "the last-token statement scorer's, since lie-check reads the last token)")
    lies.add_argument("--json", action="store_true", help="machine-readable output (with every rollout)")
    lies.set_defaults(func=cmd_lies)

    x = ps.add_parser("explain", help="atlas features most aligned with the truth direction")
    x.add_argument("--probe", required=True, help="probe folder")
    x.add_argument("atlas", help="atlas folder")
    x.add_argument("--top", type=int, default=10, help="how many features (default: 10)")
    x.add_argument("--json", action="store_true", help="machine-readable output")
    x.set_defaults(func=cmd_explain)

    lc = sub.add_parser("lie-check", help="truth score of a stated answer; flags a contradiction",
                        description="Read a text (e.g. 'Q: ... A: ...') through the model and score it with a "
                                    "truth probe: the probability the model internally holds it true.")
    lc.add_argument("text", help='e.g. "Q: What is the capital of France? A: Berlin."')
    lc.add_argument("--probe", required=True, help="probe folder (from `lmscope probe train`)")
    lc.add_argument("--model", default=None, help="model (default: the probe's own)")
    lc.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    lc.add_argument("--json", action="store_true", help="machine-readable output")
    lc.set_defaults(func=cmd_lie_check)


# --- helpers -----------------------------------------------------------------------
def resolve_layers(lm, spec: str) -> list[str]:
    spec = spec.strip()
    if spec == "all":
        return lm.hooks.resolve("blocks.*.resid_post")
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit():
            L = int(item)
            if not 0 <= L < lm.n_layers:
                raise UserError(f"layer {L} is out of range; {lm.name} has layers 0..{lm.n_layers - 1}")
            out.append(f"blocks.{L}.resid_post")
        else:
            out.extend(lm.hooks.resolve(item))
    if not out:
        raise UserError("no layers given; pass --layers all, '8,12' or hook names")
    return out


def _kinds(spec: str) -> list[str]:
    from ..errors import close_matches
    from ..probe.probes import KINDS

    out = [k.strip() for k in spec.split(",") if k.strip()]
    for k in out:
        if k not in KINDS:
            raise UserError(f"unknown probe type {k!r}{close_matches(k, KINDS)}; choose from {', '.join(KINDS)}")
    return out


def _load_model(name, device):
    from ..models.load import load_model

    return load_model(name, device=device)


def _open_probe(path: str, model: str | None, device: str):
    from ..probe.artifact import check_compatible, load_probe

    probe, meta = load_probe(path)
    lm = _load_model(model or meta["model"]["model"], device)
    check_compatible(meta, lm, path=path)
    return probe, meta, lm


# --- commands ------------------------------------------------------------------------
def cmd_datasets(args) -> int:
    from ..probe.datasets import load_dataset, names

    rows = []
    for n in names():
        ds = load_dataset(n)
        rows.append({"name": n, "domain": ds.domain, "train": len(ds.train), "test": len(ds.test),
                     "true": sum(s.label for s in ds.all), "false": sum(1 - s.label for s in ds.all),
                     "template": ds.description, "example": ds.train[0].text})
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<14}{'train':>6}{'test':>6}  {'domain':<11} template")
    for r in rows:
        print(f"{r['name']:<14}{r['train']:>6}{r['test']:>6}  {r['domain']:<11} {r['template']}")
    print("\nbalanced (one true and one false statement per entity); split by entity "
          "(test entities never seen in training)")
    return 0


def cmd_train(args) -> int:
    from pathlib import Path

    from ..probe.artifact import save_probe
    from ..probe.datasets import load_dataset, parse_names
    from ..probe.sweep import layer_of, plot_curve, sweep

    names = parse_names(args.dataset)
    kinds = _kinds(args.kinds)
    if args.save_kind not in kinds:
        raise UserError(f"--save-kind {args.save_kind} is not among --kinds {','.join(kinds)}")
    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} exists; pass --force to overwrite it or choose another --out")
    datasets = [load_dataset(n) for n in names]
    from ..models.load import load_model

    lm = load_model(args.model, dtype=args.model_dtype, device=args.device)
    hooks = resolve_layers(lm, args.layers)
    results = sweep(lm, datasets, hooks, kinds, batch_size=args.batch_size, progress=sys.stderr.isatty())
    saved = [r for r in results if r.kind == args.save_kind]
    best = max(saved, key=lambda r: (r.test_acc, -layer_of(r.hook)))
    metrics = {"test_acc": best.test_acc, "train_acc": best.train_acc, "test_acc_by_set": best.test_acc_by_set,
               "per_layer": {r.hook: r.test_acc for r in saved}}
    out = save_probe(best.probe, args.out, fingerprint=lm.fingerprint(), datasets=names, metrics=metrics,
                     force=args.force)
    png = None if args.png == "none" else (args.png or str(out / "accuracy.png"))
    if png:
        plot_curve(results, png, f"{lm.name}: held-out accuracy on {','.join(names)}")
    if args.json:
        print_json({"datasets": names, "saved": {"path": str(out), "hook": best.hook, "kind": best.kind,
                                                  "test_acc": best.test_acc},
                    "png": png, "results": [{"hook": r.hook, "kind": r.kind, "train_acc": r.train_acc,
                                             "test_acc": r.test_acc, "test_acc_by_set": r.test_acc_by_set}
                                            for r in results]})
        return 0
    print(f"held-out accuracy (test entities never seen in training) on {','.join(names)}")
    print(f"{'hook':<24}" + "".join(f"{k:>14}" for k in kinds))
    for h in hooks:
        row = {r.kind: r for r in results if r.hook == h}
        print(f"{h:<24}" + "".join(f"{row[k].test_acc:>14.3f}" for k in kinds))
    print(f"saved the {best.kind} probe at {best.hook} (held-out accuracy {best.test_acc:.3f}) to {out}")
    if png:
        print(f"wrote {png}")
    return 0


def cmd_eval(args) -> int:
    from ..probe.activations import last_token_acts
    from ..probe.datasets import load_dataset, parse_names
    from ..probe.probes import fit

    tests = parse_names(args.dataset)
    rows: list[tuple[str, object]] = []
    if args.probe and args.train:
        raise UserError("pass either --probe (saved probes) or --train (fit per set), not both")
    if args.probe:
        lm = None
        for path in [s for s in args.probe.split(",") if s]:
            probe, meta, lm2 = _open_probe(path, args.model, args.device)
            if lm is not None and lm2.name != lm.name:
                raise UserError("all --probe folders must belong to the same model")
            lm = lm2
            rows.append((f"{path} ({','.join(meta['datasets'])})", probe))
    elif args.train:
        if args.layer is None:
            raise UserError("--train needs --layer (a layer number or hook name)")
        lm = _load_model(args.model or "smollm2-135m", args.device)
        hook = resolve_layers(lm, args.layer)
        if len(hook) != 1:
            raise UserError("--layer takes one layer")
        kind = _kinds(args.kind)[0]
        for n in parse_names(args.train):
            ds = load_dataset(n)
            texts = [s.text for s in ds.train] + ([s.contrast for s in ds.train] if kind == "ccs" else [])
            x = last_token_acts(lm, texts, hook)[hook[0]]
            m = len(ds.train)
            import torch

            y = torch.tensor([s.label for s in ds.train])
            rows.append((n, fit(kind, hook[0], x[:m], y, x[m:] if kind == "ccs" else None)))
    else:
        raise UserError("pass --probe P (a trained probe) or --train SETS --layer L")
    import torch

    matrix = {}
    for label, probe in rows:
        matrix[label] = {}
        for n in tests:
            ds = load_dataset(n)
            x = last_token_acts(lm, [s.text for s in ds.test], [probe.hook])[probe.hook]
            matrix[label][n] = probe.accuracy(x, torch.tensor([s.label for s in ds.test]))
    if args.json:
        print_json({"model": lm.name, "split": "test", "matrix": matrix})
        return 0
    w = max(len(r) for r in matrix) + 2
    print(f"held-out accuracy, rows = trained on, columns = tested on ({lm.name}, {rows[0][1].hook})")
    print(" " * w + "".join(f"{n:>14}" for n in tests))
    for r, vals in matrix.items():
        print(f"{r:<{w}}" + "".join(f"{vals[n]:>14.3f}" for n in tests))
    return 0


def cmd_lies(args) -> int:
    import math

    from ..probe.artifact import set_threshold
    from ..probe.datasets import BUILTIN, is_test_entity
    from ..probe.facts import CITIES
    from ..probe.lies import evaluate_lies

    if args.max_new_tokens < 1 or args.batch_size < 1 or args.limit < 0:
        raise UserError("--max-new-tokens and --batch-size must be at least 1, --limit at least 0")
    probe, meta, lm = _open_probe(args.probe, args.model, args.device)
    cities = sorted(CITIES)[: args.limit] if args.limit else None
    # Cities the probe's training statements mentioned (train split of a cities-domain set).
    seen = {c for c in CITIES if not is_test_entity("cities", c)}
    train_cities = seen if any(BUILTIN.get(n, ("",))[0] == "cities" for n in meta.get("datasets", [])) else set()
    rep = evaluate_lies(lm, probe, cities=cities, train_cities=train_cities, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, progress=sys.stderr.isatty())
    if args.set_threshold:
        if math.isnan(rep.threshold):
            raise UserError("no honest control answers to set a threshold on; run on more cities (--limit)")
        set_threshold(args.probe, rep.threshold)
    if args.json:
        print_json(rep.to_dict())
        return 0
    print(f"{rep.n} non-empty answers ({rep.n_empty} empty left out, {rep.n_hit_limit} ran into the "
          f"{rep.max_new_tokens}-token limit) by {lm.name}; probe {probe.kind} at {probe.hook}")
    print(f"  lie-prompt answers that are actually wrong: {rep.n_lies_that_are_wrong}/{rep.n_lie_prompt}; "
          f"honest-prompt answers that are correct: {rep.n_honest_that_are_correct}/{rep.n_honest_prompt}")
    _print_scorers(rep.scorers)
    if rep.scorers_unseen_cities:
        print(f"on the {rep.n_unseen_cities} cities the probe never saw in training:")
        _print_scorers(rep.scorers_unseen_cities)
    print(f"stored threshold: truth {rep.threshold:.3f} (probe_statement)" if args.set_threshold else
          "pass --set-threshold to store the probe_statement threshold for lie-check")
    return 0


def _print_scorers(scorers: dict) -> None:
    cols = ("AUROC lie-prompt", "AUROC wrong", "AUROC lies", "FPR honest", "TPR lie-prompt", "TPR lies")
    print(f"  {'scorer':<30}" + "".join(f"{c:>16}" for c in cols))
    for k, r in scorers.items():
        vals = (r["auroc_instructed"], r["auroc_correctness"], r["auroc_lies"], r["fpr_heldout_honest"],
                r["tpr_heldout_lie_prompt"], r["tpr_heldout_actual_lies"])
        print(f"  {k:<30}" + "".join(f"{v:>16.3f}" for v in vals))
    print("  (AUROC lies: lie-prompt answers that are wrong vs honest-prompt answers that are correct; FPR/TPR on "
          "held-out cities at the 95th percentile of honest control answers' lie scores)")


def cmd_explain(args) -> int:
    from ..probe.artifact import load_probe
    from ..probe.explain import aligned_features

    probe, _ = load_probe(args.probe)
    feats = aligned_features(probe, args.atlas, top=args.top)
    if args.json:
        print_json([f.to_dict() for f in feats])
        return 0
    print(f"features of {probe.hook} most aligned with the truth direction (cos > 0: towards true)")
    for f in feats:
        print(f"  {f.hook}/{f.feature:<8} cos {f.cosine:+.3f}  {f.label or '(unlabeled)'}")
    if not any(f.label for f in feats):
        print("no labels in this atlas yet; they appear after `lmscope explain`")
    return 0


def cmd_lie_check(args) -> int:
    from ..probe.liecheck import lie_check

    probe, _, lm = _open_probe(args.probe, args.model, args.device)
    res = lie_check(lm, probe, args.text)
    if args.json:
        print_json(res.to_dict())
        return 0
    verdict = "CONTRADICTS the model's internal belief" if res.contradiction else "consistent with the model's belief"
    print(f"truth score {res.truth_last:.3f} at the last token (answer-token mean {res.truth_answer_mean:.3f}); "
          f"threshold {res.threshold:.3f}: {verdict}")
    return 0

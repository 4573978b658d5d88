"""`lmscope probe ...` and `lmscope lie-check`: truth probes and a lie detector.

    lmscope probe datasets
    lmscope probe train --model smollm2-135m --dataset cities,larger_than --layers all --out
    truth_probe
    lmscope probe eval --probe truth_probe --dataset neg_cities,smaller_than
    lmscope probe eval --model smollm2-135m --train cities,neg_cities,larger_than --layer 12
    --dataset all
    lmscope probe transfer --layers 8,12,16,20        # leave-one-domain-out vs the log-probability
    lmscope probe lies --probe truth_probe            # lie detection on the model's own answers
    lmscope probe explain --probe truth_probe atlas/
    lmscope lie-check --probe truth_probe "Q: What is the capital of France? A: Berlin."

Flags are generated from each command's frozen config in lmscope/probe (SweepConfig, MatrixConfig,
TransferConfig, LiesConfig, AlignConfig, LieCheckConfig); the work is done there too.
"""

from __future__ import annotations

import sys

from ..config import add_arguments, from_args
from ..errors import UserError
from ..probe.specs import resolve_layers
from ._common import print_json


def register(sub) -> None:
    from ..probe.explain import AlignConfig
    from ..probe.liecheck import LieCheckConfig
    from ..probe.lies import LiesConfig
    from ..probe.matrix import MatrixConfig
    from ..probe.sweep import SweepConfig
    from ..probe.transfer import TransferConfig

    p = sub.add_parser(
        "probe",
        help="truth probes: datasets, per-layer training, generalization, atlas links",
        description="Linear probes that read what the model internally holds true "
        "(logistic regression, mass-mean, CCS), trained per layer on built-in "
        "true/false statement sets split by entity.",
    )
    ps = p.add_subparsers(dest="probe_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    d = ps.add_parser("datasets", help="list the built-in true/false statement sets with sizes")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_datasets)

    t = ps.add_parser(
        "train",
        help="fit probes at each layer on train entities, choose on validation, "
        "report test once, save the chosen probe",
    )
    add_arguments(t, SweepConfig)
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_train)

    e = ps.add_parser(
        "eval", help="generalization: a train x test accuracy matrix on held-out entities"
    )
    add_arguments(e, MatrixConfig)
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_eval)

    tr = ps.add_parser(
        "transfer",
        help="leave-one-domain-out: train on all domains but one, test on it, "
        "next to the statement log-probability baseline",
        description="For each domain of the chosen sets: fit on the other domains' train split, "
        "choose the layer on their validation split, score every statement of the "
        "held-out domain (accuracy at the stored threshold, AUROC) next to the "
        "statement's mean token log-probability, and recalibrate the threshold on "
        "a few labelled entities of the held-out domain.",
    )
    add_arguments(tr, TransferConfig)
    tr.add_argument("--json", action="store_true", help="machine-readable output")
    tr.set_defaults(func=cmd_transfer)

    lies = ps.add_parser(
        "lies", help="lie detection on the model's own honest vs instructed-lie answers"
    )
    add_arguments(lies, LiesConfig)
    lies.add_argument(
        "--json", action="store_true", help="machine-readable output (with every rollout)"
    )
    lies.set_defaults(func=cmd_lies)

    x = ps.add_parser("explain", help="atlas features most aligned with the truth direction")
    add_arguments(x, AlignConfig, positional=("atlas",))
    x.add_argument("--json", action="store_true", help="machine-readable output")
    x.set_defaults(func=cmd_explain)

    lc = sub.add_parser(
        "lie-check",
        help="truth score of a stated answer; flags a contradiction",
        description="Read a text (e.g. 'Q: ... A: ...') through the model and score it with a "
        "truth probe: the probability the model internally holds it true.",
    )
    add_arguments(lc, LieCheckConfig, positional=("text",))
    lc.add_argument("--json", action="store_true", help="machine-readable output")
    lc.set_defaults(func=cmd_lie_check)


# --- commands ------------------------------------------------------------------------
def cmd_datasets(args) -> int:
    from ..probe.datasets import load_dataset, names

    rows = []
    for n in names():
        ds = load_dataset(n)
        rows.append(
            {
                "name": n,
                "domain": ds.domain,
                "train": len(ds.train),
                "val": len(ds.val),
                "test": len(ds.test),
                "true": sum(s.label for s in ds.all),
                "false": sum(1 - s.label for s in ds.all),
                "template": ds.description,
                "example": ds.train[0].text,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<14}{'train':>6}{'val':>6}{'test':>6}  {'domain':<11} template")
    for r in rows:
        print(
            f"{r['name']:<14}{r['train']:>6}{r['val']:>6}{r['test']:>6}  {r['domain']:<11} "
            f"{r['template']}"
        )
    print(
        "\nbalanced (one true and one false statement per entity); split by entity into train / "
        "validation "
        "/ test (choices on validation; test entities never used for fitting or choosing)"
    )
    return 0


def cmd_train(args) -> int:
    from pathlib import Path

    from ..probe.artifact import save_probe
    from ..probe.datasets import load_dataset, parse_names
    from ..probe.specs import parse_kinds
    from ..probe.sweep import SweepConfig, plot_curve, sweep

    cfg = from_args(SweepConfig, args)
    names = parse_names(cfg.dataset)
    kinds = parse_kinds(cfg.kinds)
    if cfg.save_kind != "auto" and cfg.save_kind not in kinds:
        raise UserError(
            f"--save-kind {cfg.save_kind} is not among --kinds {','.join(kinds)} (or pass auto)"
        )
    if Path(cfg.out).exists() and not cfg.force:
        raise UserError(f"{cfg.out} exists; pass --force to overwrite it or choose another --out")
    datasets = [load_dataset(n) for n in names]
    from ..models.load import load_model

    lm = load_model(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
    hooks = resolve_layers(lm, cfg.layers)
    res = sweep(
        lm,
        datasets,
        hooks,
        kinds,
        batch_size=cfg.batch_size,
        progress=sys.stderr.isatty(),
        choose_kinds=None if cfg.save_kind == "auto" else [cfg.save_kind],
    )
    best, test = res.chosen, res.test
    metrics = {
        "chosen": {
            "hook": best.hook,
            "kind": best.kind,
            "val_acc": best.val_acc,
            "val_auroc": best.val_auroc,
            "train_acc": best.train_acc,
        },
        "test": {
            "acc": test.acc.to_dict(),
            "auroc": test.auroc.to_dict(),
            "acc_by_set": {k: v.to_dict() for k, v in test.acc_by_set.items()},
        },
        "per_layer_val": [
            {"hook": r.hook, "kind": r.kind, "val_acc": r.val_acc, "val_auroc": r.val_auroc}
            for r in res.results
        ],
        "split": res.split,
    }
    out = save_probe(
        best.probe,
        cfg.out,
        fingerprint=lm.fingerprint(),
        datasets=names,
        metrics=metrics,
        force=cfg.force,
    )
    png = None if cfg.png == "none" else (cfg.png or str(out / "accuracy.png"))
    if png:
        plot_curve(res.results, png, f"{lm.name}: validation accuracy on {','.join(names)}")
    if args.json:
        print_json(
            {
                "datasets": names,
                "saved": {"path": str(out), "hook": best.hook, "kind": best.kind},
                "test": metrics["test"],
                "split": res.split,
                "png": png,
                "results": [
                    {
                        "hook": r.hook,
                        "kind": r.kind,
                        "train_acc": r.train_acc,
                        "val_acc": r.val_acc,
                        "val_auroc": r.val_auroc,
                        "val_acc_by_set": r.val_acc_by_set,
                    }
                    for r in res.results
                ],
            }
        )
        return 0
    n = res.split["n_statements"]
    print(
        f"validation accuracy / AUROC per layer on {','.join(names)} (fit on {n['train']} train "
        "statements, "
        f"scored on {n['val']} validation statements about other entities)"
    )
    print(f"{'hook':<24}" + "".join(f"{k:>20}" for k in kinds))
    for h in hooks:
        row = {r.kind: r for r in res.results if r.hook == h}
        print(
            f"{h:<24}" + "".join(f"{row[k].val_acc:>12.3f} / {row[k].val_auroc:.3f}" for k in kinds)
        )
    print(
        f"chosen on validation: {best.kind} at {best.hook} (validation accuracy {best.val_acc:.3f})"
    )
    print(format_test_line(metrics))
    for k, v in test.acc_by_set.items():
        print(
            f"  {k}: {v.value:.3f} [{v.lo:.3f}, {v.hi:.3f}] on {v.n} statements, {v.n_units} "
            "entities"
        )
    print(f"saved to {out}")
    if png:
        print(f"wrote {png}")
    return 0


def format_test_line(metrics: dict) -> str:
    """One line with the chosen probe's test accuracy, AUROC, sizes and 95% bootstrap intervals."""
    a, r = metrics["test"]["acc"], metrics["test"]["auroc"]
    return (
        "test (scored once, entities never used for fitting or choosing): accuracy "
        f"{a['value']:.3f} "
        f"[{a['lo']:.3f}, {a['hi']:.3f}], AUROC {r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] on "
        f"{a['n']} statements about {a['n_units']} entities (95% bootstrap over entities; few "
        "entities, "
        f"so the interval is wide)"
    )


def cmd_eval(args) -> int:
    from ..probe.matrix import MatrixConfig, generalization_matrix

    res = generalization_matrix(from_args(MatrixConfig, args))
    if args.json:
        print_json(res.to_dict())
        return 0
    cells, tests = res.cells, res.tests
    w = max(len(r) for r in cells) + 2
    print(
        "test-split accuracy [95% bootstrap over entities], rows = trained on, columns = tested "
        "on "
        f"({res.model}, {res.hook})"
    )
    print(" " * w + "".join(f"{n:>22}" for n in tests))
    for r, vals in cells.items():
        print(f"{r:<{w}}" + "".join(f"{vals[n].acc.fmt(2):>22}" for n in tests))
    print("AUROC")
    for r, vals in cells.items():
        print(f"{r:<{w}}" + "".join(f"{vals[n].auroc.fmt(2):>22}" for n in tests))
    print(
        "entities per column: "
        + ", ".join(f"{n} {next(iter(cells.values()))[n].acc.n_units}" for n in tests)
    )
    return 0


def cmd_transfer(args) -> int:
    from ..config import to_dict
    from ..models.load import load_model
    from ..probe.transfer import TransferConfig, leave_one_domain_out

    cfg = from_args(TransferConfig, args)
    lm = load_model(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
    hooks = resolve_layers(lm, cfg.layers)
    res = leave_one_domain_out(lm, cfg, hooks, progress=sys.stderr.isatty())
    if args.json:
        print_json(
            {"model": lm.name, "config": to_dict(cfg), "domains": [r.to_dict() for r in res]}
        )
        return 0
    print(
        f"leave-one-domain-out transfer of a {cfg.kind} probe ({lm.name}); every statement of the "
        "held-out "
        "domain, [95% bootstrap over its entities]"
    )
    print(
        f"{'held out':<12}{'n':>5}{'ent':>5}  "
        f"{'layer':<21}{'acc @ threshold':>22}{'probe AUROC':>22}"
        f"{'logprob AUROC':>22}{'probe - logprob':>24}"
    )
    for r in res:
        print(
            f"{r.domain:<12}{r.n:>5}{r.n_entities:>5}  {r.hook:<21}{r.acc_at_threshold.fmt(2):>22}"
            f"{r.probe_auroc.fmt(2):>22}{r.logprob_auroc.fmt(2):>22}{r.probe_minus_logprob_auroc.fmt(2):>24}"
        )
    print(
        "\naccuracy on the rest of the held-out domain after moving the threshold to the midpoint "
        "of k labelled "
        f"entities (mean over {cfg.repeats} draws [2.5-97.5% of draws]), probe | log-probability"
    )
    print(f"{'held out':<12}" + "".join(f"{'k=' + str(k):>32}" for k in cfg.shots))
    for r in res:
        cells = [
            f"{s.probe_mean:.2f} [{s.probe_range[0]:.2f},{s.probe_range[1]:.2f}] | "
            f"{s.logprob_mean:.2f}"
            for s in r.shots
        ]
        print(f"{r.domain:<12}" + "".join(f"{c:>32}" for c in cells))
    print()
    for r in res:
        verdict = (
            "beats the log-probability"
            if r.beats_logprob
            else "does NOT beat the log-probability (difference interval includes or is below 0)"
        )
        if r.ranking_transfers and not r.threshold_transfers:
            verdict += "; the ranking transfers but the threshold does not (recalibrate the offset)"
        elif not r.ranking_transfers:
            verdict += "; the ranking does not transfer (AUROC interval includes 0.5)"
        print(f"{r.domain}: {verdict}")
        for name, b in r.by_set.items():
            print(
                f"    {name}: n {b['n']}, acc @ threshold {b['acc_at_threshold']:.2f}, probe AUROC "
                f"{b['probe_auroc']:.2f}, logprob AUROC {b['logprob_auroc']:.2f}"
            )
    return 0


def cmd_lies(args) -> int:
    import math

    from ..probe.artifact import open_probe, set_thresholds
    from ..probe.datasets import BUILTIN, split_of
    from ..probe.facts import CITIES
    from ..probe.lies import LiesConfig, evaluate_lies

    cfg = from_args(LiesConfig, args)
    probe, meta, lm = open_probe(cfg.probe, cfg.model, cfg.device)
    cities = sorted(CITIES)[: cfg.limit] if cfg.limit else None
    # Cities in the probe's training statements: the train split of a cities-domain set. Validation
    # cities were only used to choose the layer and kind; test cities were never used.
    seen = {c for c in CITIES if split_of("cities", c) == "train"}
    train_cities = (
        seen
        if any(BUILTIN.get(n, ("",))[0] == "cities" for n in meta.get("datasets", []))
        else set()
    )
    rep = evaluate_lies(
        lm,
        probe,
        cities=cities,
        train_cities=train_cities,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        progress=sys.stderr.isatty(),
        n_boot=cfg.n_boot,
    )
    if cfg.set_threshold:
        if not rep.thresholds or math.isnan(rep.thresholds["qa"]):
            raise UserError(
                "no honest and correct control answers to set a threshold on; run on more cities "
                "(--limit)"
            )
        set_thresholds(cfg.probe, rep.thresholds, use="qa")
    if args.json:
        print_json(rep.to_dict())
        return 0
    print(
        f"{rep.n} non-empty answers ({rep.n_empty} empty left out, {rep.n_hit_limit} ran into the "
        f"{rep.max_new_tokens}-token limit) by {lm.name}; probe {probe.kind} at {probe.hook} "
        f"(trained on {','.join(meta.get('datasets', []))})"
    )
    print(
        "  lie-prompt answers that are actually wrong: "
        f"{rep.n_lies_that_are_wrong}/{rep.n_lie_prompt}; "
        "honest-prompt answers that are correct: "
        f"{rep.n_honest_that_are_correct}/{rep.n_honest_prompt}"
    )
    order = [rep.headline] + [k for k in rep.subsets if k != rep.headline]
    for name in order:
        sub = rep.subsets[name]
        tag = " (headline)" if name == rep.headline else ""
        print(f"\n{SUBSET_TEXT[name]}{tag}: {sub['n']} answers about {sub['n_cities']} cities")
        if sub["scorers"]:
            _print_scorers(sub["scorers"])
    print(
        "  (AUROC lies: lie-prompt answers that are wrong vs honest-prompt answers that are "
        "correct; FPR on held-out "
        "honest AND correct answers, TPR on held-out lie-prompt answers / actual lies, at the "
        "95th percentile of "
        "the control cities' honest and correct answers' lie scores; [95% bootstrap over cities])"
    )
    thr = rep.thresholds
    if thr:
        print(
            f"truth thresholds: qa (lie-check's format) {thr['qa']:.3f}, restated statement "
            f"{thr['statement']:.3f}"
        )
    print(
        "stored the qa threshold for lie-check"
        if cfg.set_threshold
        else "pass --set-threshold to store the qa threshold (the format lie-check reads) in the "
        "probe"
    )
    return 0


SUBSET_TEXT = {
    "all": "every answer",
    "unseen_cities": "cities absent from the probe's training statements",
    "names_country": "answers that name a country",
    "unseen_cities_names_country": "unseen cities, answers that name a country",
}


def _print_scorers(scorers: dict) -> None:
    cols = (
        "auroc_instructed",
        "auroc_correctness",
        "auroc_lies",
        "fpr_heldout_honest_correct",
        "tpr_heldout_actual_lies",
    )
    heads = ("AUROC lie-prompt", "AUROC wrong", "AUROC lies", "FPR honest&correct", "TPR lies")
    print(f"  {'scorer':<28}" + "".join(f"{c:>22}" for c in heads))
    for k, r in scorers.items():
        cells = [
            f"{r[c]:.2f} [{r['intervals'][c][0]:.2f},{r['intervals'][c][1]:.2f}]" for c in cols
        ]
        print(f"  {k:<28}" + "".join(f"{c:>22}" for c in cells))
    n = next(iter(scorers.values()))["n"]
    print(
        f"  n: {n['wrong']} wrong, {n['actual_lies']} actual lies, {n['honest_correct']} "
        "honest&correct "
        f"({n['controls']} controls); held out: {n['fpr_heldout_honest_correct']} honest&correct, "
        f"{n['tpr_heldout_actual_lies']} actual lies"
    )


def cmd_explain(args) -> int:
    from ..probe.artifact import load_probe
    from ..probe.explain import AlignConfig, aligned_features

    cfg = from_args(AlignConfig, args)
    probe, _ = load_probe(cfg.probe)
    feats = aligned_features(probe, cfg.atlas, top=cfg.top)
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
    from ..probe.artifact import open_probe
    from ..probe.liecheck import LieCheckConfig, lie_check

    cfg = from_args(LieCheckConfig, args)
    probe, _, lm = open_probe(cfg.probe, cfg.model, cfg.device)
    res = lie_check(lm, probe, cfg.text)
    if args.json:
        print_json(res.to_dict())
        return 0
    verdict = (
        "CONTRADICTS the model's internal belief"
        if res.contradiction
        else "consistent with the model's belief"
    )
    print(
        f"truth score {res.truth_last:.3f} at the last token (answer-token mean "
        f"{res.truth_answer_mean:.3f}); "
        f"threshold {res.threshold:.3f} "
        f"({THRESHOLD_TEXT.get(res.threshold_format, res.threshold_format)}): "
        f"{verdict}"
    )
    return 0


THRESHOLD_TEXT = {
    "qa": "calibrated on honest Q/A answers by `probe lies --set-threshold`",
    "uncalibrated": "uncalibrated; set one with `probe lies --set-threshold`",
}

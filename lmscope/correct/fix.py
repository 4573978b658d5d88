"""The repair loop: diagnose on the fit prompts, choose within a side-effect budget, judge on
the held-out prompts against a control edit.

Protocol (docs/correct.md; ../shared/MEASURING.md rules):
1. The bug file is split by group into fit and held-out prompts (bugs.split).
2. Candidates (contrastive directions at several layers, projected out or steered against,
   diagnose.py) are ranked by the fit prompts' mean margin. The best `top` ones get their
   added loss measured on fit-side general text (the corpus's train split). Among those within
   --max-added-nats that lower the fit margin, the one with the lowest fit bad rate is chosen,
   ties going to the smallest added loss (fix the bug, then disturb the model least). Nothing
   about the held-out prompts or the held-out text is seen before this choice.
3. The chosen edit is reported once on the held-out prompts (bad and good rates before and
   after, intervals over groups; the paired change in margin) and on held-out general text
   (the corpus's test split: added nats, KL, next-token accuracy).
4. A control edit of the same kind and size with a random direction (seeded) gets the same
   report, so a reader sees whether the fix is specific or just any perturbation.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..probe.metrics import Score, paired_difference
from .bugs import BugSet, load_bugs, split
from .diagnose import (
    ALPHAS,
    Candidate,
    contrastive_directions,
    direction_edits,
    feature_candidates,
    feature_findings,
    feature_gated_edits,
    gated_candidates,
    generation_directions,
    proxy_edits,
    score_edits,
)
from .edits import AddVector, FeatureAblation, Gated, GatedVector, ProjectOut
from .fix_config import FixConfig
from .measure import (
    TextEffect,
    generations,
    knowledge_accuracy,
    own_logprobs,
    pair_margins,
    rate,
    text_effect,
)


@dataclass
class Outcome:
    """One edit's numbers on the held-out prompts and held-out text."""

    edit: str
    bad_rate: Score
    good_rate: Score
    margin_change: Score
    """mean over held-out prompts of (value after - value before), paired by prompt: the margin
    for pairs, the scorer's 0/1 for a scorer (so: the paired change of the bad rate)"""
    text: TextEffect
    knowledge: dict = field(default_factory=dict)
    """{dataset: {"before", "after", "change"}}: 2-choice knowledge accuracy (measure.py)"""

    def to_dict(self) -> dict:
        return {
            "knowledge": self.knowledge,
            "edit": self.edit,
            "bad_rate": self.bad_rate.to_dict(),
            "good_rate": self.good_rate.to_dict(),
            "margin_change": self.margin_change.to_dict(),
            "text": self.text.to_dict(),
        }


@dataclass
class FixReport:
    bugs: str
    model: str
    n_fit: int
    n_heldout: int
    before_bad_rate: Score
    before_good_rate: Score
    fit_before_margin: float
    candidates: list[dict]
    chosen: str | None
    fix: Outcome | None
    control: Outcome | None
    seconds: dict = field(default_factory=dict)
    note: str = ""
    features: list[dict] = field(default_factory=list)
    """with dictionaries: the top features by attribution, with labels and ablation effects"""
    behaviour: str = "margin"
    """what a prompt's value is: "margin" (pairs) or "scorer:NAME" (1 if it fired)"""
    examples: list[dict] = field(default_factory=list)
    """a few held-out prompts' greedy continuations: before, after the fix, after the control"""
    status: str = "chosen"
    """"chosen", or "not chosen: failed on fit" when `fix` holds the best fit candidate that
    did not pass (reported so a reader sees how far it is; never exported)"""
    shown: str | None = None
    """the candidate whose held-out numbers `fix` holds"""
    truth_probes: list[dict] = field(default_factory=list)
    """the truth probes whose directions were candidates (hook, kind, gap, validation accuracy)"""
    knowledge_splits: str = "all"
    """probe-dataset entities the knowledge check read ("val+test" for a truth-probe edit)"""

    def to_dict(self) -> dict:
        return {
            "bugs": self.bugs,
            "model": self.model,
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "behaviour": self.behaviour,
            "before": {
                "bad_rate": self.before_bad_rate.to_dict(),
                "good_rate": self.before_good_rate.to_dict(),
            },
            "fit_before_margin": self.fit_before_margin,
            "candidates": self.candidates,
            "chosen": self.chosen,
            "status": self.status if self.fix else None,
            "shown": self.shown,
            "fix": self.fix.to_dict() if self.fix else None,
            "truth_probes": self.truth_probes,
            "knowledge_splits": self.knowledge_splits,
            "control": self.control.to_dict() if self.control else None,
            "features": self.features,
            "examples": self.examples,
            "seconds": self.seconds,
            "note": self.note,
        }


def parse_layers(lm, spec: str | None) -> list[int]:
    """--layers (probe's syntax: 'all', '0,6,12' or resid_post hook globs) -> layer numbers."""
    from ..models.hooks import HookPoints
    from ..probe.specs import resolve_layers

    n = lm.n_layers
    if spec is None:
        return sorted(set(range(0, n, 3)) | {n - 1})
    out = set()
    for h in resolve_layers(lm, spec):
        p = HookPoints.parse(h)
        if p is None or p[1] != "resid_post":
            raise UserError(f"--layers {spec!r}: {h} is not a blocks.L.resid_post hook")
        out.add(p[0])
    return sorted(out)


def control_of(edit, seed: int, *, pool=()):
    """The same kind and size of edit along a random direction (for a feature ablation: as many
    random features, drawn from those active on the fit prompts)."""
    g = torch.Generator().manual_seed(seed + 7919)
    if isinstance(edit, GatedVector):  # the same gate, a random vector of the same norm
        inner = control_of(edit.vector, seed)
        return GatedVector(inner, edit.signature, edit.threshold, label=edit.label)
    if isinstance(edit, Gated):  # the same gate, a random vector of the same norm
        return Gated(control_of(edit.vector, seed), edit.gate, label=edit.label)
    if isinstance(edit, FeatureAblation):
        rest = [k for k in pool if k not in set(edit.features)]
        if not rest:
            raise UserError("no other active features to draw a control from")
        pick = torch.randperm(len(rest), generator=g)[: len(edit.features)].tolist()
        feats = tuple(rest[i] for i in sorted(pick))
        return FeatureAblation(feats, edit.dictionaries, label="random active features (control)")
    if isinstance(edit, ProjectOut):
        r = torch.randn(edit.direction.numel(), generator=g)
        return ProjectOut(r, edit.layers, label="a random direction (control)")
    r = torch.randn(edit.vector.numel(), generator=g)
    r = r / r.norm() * edit.vector.norm()
    return AddVector(edit.layer, r, label="a random vector of the same norm (control)")


def general_text(lm, cfg: FixConfig, split_name: str) -> list[torch.Tensor]:
    from ..capture.corpus import DEFAULT_CORPUS
    from ..dictionaries.evaluate import heldout_contexts

    corpus = DEFAULT_CORPUS if cfg.corpus == "default" else cfg.corpus
    return heldout_contexts(
        lm, corpus, tokens=cfg.text_tokens, ctx_len=cfg.ctx_len, split=split_name
    )


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"lmscope fix: {msg}", file=sys.stderr, flush=True)


class Behaviour:
    """Per-prompt values of the bug's behaviour: the margin for pairs, 1.0 / 0.0 for a scorer
    (did it fire on the greedy continuation)."""

    def __init__(self, cfg: FixConfig) -> None:
        self.scorer = cfg.scorer
        self.max_new_tokens = cfg.max_new_tokens

    @property
    def change_name(self) -> str:
        return "margin change" if self.scorer is None else "bad-rate change (paired)"

    def values(self, lm, bugs: BugSet, edits=None) -> torch.Tensor:
        if self.scorer is None:
            return pair_margins(lm, bugs.cases, edits)
        gens = generations(lm, bugs.cases, edits, max_new_tokens=self.max_new_tokens)
        return self.flags(gens, bugs.cases)

    def flags(self, gens, cases) -> torch.Tensor:
        from .scorers import ANSWER_SCORERS, SCORERS

        if self.scorer in ANSWER_SCORERS:
            f = ANSWER_SCORERS[self.scorer]
            vals = [f(g, c.answer) for g, c in zip(gens, cases)]
        else:
            vals = [SCORERS[self.scorer](g) for g in gens]
        return torch.tensor([float(v) for v in vals], dtype=torch.float64)

    def bad(self, v: torch.Tensor) -> torch.Tensor:
        return v > 0 if self.scorer is None else v > 0.5

    def good(self, v: torch.Tensor) -> torch.Tensor:
        return v < 0 if self.scorer is None else v < 0.5


def knowledge_change(lm, edit, before: dict, splits=None) -> dict:
    """Per dataset: accuracy before, after (interval over entities) and the paired change."""
    from .measure import knowledge_pairs

    after = knowledge_accuracy(lm, edit.runtime(lm), list(before), splits=splits)
    out = {}
    for name, b in before.items():
        a = after[name]
        ents = knowledge_pairs(name, splits)[2]
        out[name] = {
            "before": float(b.mean()),
            "after": rate(a > 0.5, ents).to_dict(),
            "change": paired_difference(
                lambda idx, a=a: float(a[idx].mean()), lambda idx, b=b: float(b[idx].mean()), ents
            ).to_dict(),
        }
    return out


def outcome(
    lm, beh: Behaviour, held: BugSet, before, edit, text, known=None, splits=None
) -> Outcome:
    groups = [c.key for c in held.cases]
    after = beh.values(lm, held, edit.runtime(lm))
    change = paired_difference(
        lambda idx: float(after[idx].mean()), lambda idx: float(before[idx].mean()), groups
    )
    return Outcome(
        edit=edit.describe(),
        bad_rate=rate(beh.bad(after), groups),
        good_rate=rate(beh.good(after), groups),
        margin_change=change,
        text=text_effect(lm, edit.runtime(lm), text),
        knowledge=knowledge_change(lm, edit, known, splits) if known else {},
    )


def examples(lm, held: BugSet, edit, control, cfg: FixConfig) -> list[dict]:
    """The first `cfg.examples` held-out prompts' greedy continuations under no edit, the fix and
    the control (what the viewer shows side by side)."""
    cases = held.cases[: cfg.examples]
    if not cases:
        return []
    n = min(cfg.max_new_tokens, cfg.example_tokens)
    runs = {
        k: generations(lm, cases, e, max_new_tokens=n)
        for k, e in (
            ("before", None),
            ("after", edit.runtime(lm)),
            ("control", control.runtime(lm)),
        )
    }
    return [
        {
            "prompt": c.prompt,
            "bad": c.bad,
            "good": c.good,
            **{k: runs[k][i].text for k in runs},
        }
        for i, c in enumerate(cases)
    ]


def fit_and_heldout(cfg: FixConfig) -> tuple[BugSet, BugSet]:
    """The bug file, checked and split (cheap: call it before loading a model)."""
    from ..errors import close_matches
    from .scorers import ANSWER_SCORERS, SCORERS

    names = [*SCORERS, *ANSWER_SCORERS]
    bugs = load_bugs(cfg.bugs)
    if bugs.mode == "scorer" and cfg.scorer is None:
        raise UserError(
            f"{cfg.bugs} has prompts without bad/good continuations: name the behaviour with "
            f"--scorer ({', '.join(names)})"
        )
    if bugs.mode == "pairs" and cfg.scorer is not None:
        raise UserError(
            f"{cfg.bugs} has bad/good continuations, which define the behaviour; --scorer is for "
            "prompt-only files"
        )
    if cfg.scorer is not None and cfg.scorer not in names:
        raise UserError(
            f"unknown scorer {cfg.scorer!r}{close_matches(cfg.scorer, names)}; "
            f"choose from {', '.join(names)}"
        )
    if cfg.scorer in ANSWER_SCORERS:
        missing = next((i for i, c in enumerate(bugs.cases, 1) if c.answer is None), None)
        if missing is not None:
            raise UserError(
                f'--scorer {cfg.scorer} judges each continuation against the line\'s "answer"; '
                f"prompt {missing} of {cfg.bugs} has none"
            )
    return split(bugs, heldout=cfg.heldout, seed=cfg.seed)


def _diagnose(lm, cfg, beh: Behaviour, fit: BugSet, layers, dictionaries, labels, fit_text=None):
    """(fit values before, candidates best first, feature findings, active-feature pool, truth
    probes). With `fit_text` (general text of the train split), the best steering candidates also
    get gated (conditional) versions: gated on their own direction (pairs), on the truth probe,
    and (with dictionaries) on the top bug features."""
    from .truth import load_truth_probe, probe_gated_edits, truth_edits, truth_probes

    tps = []
    if cfg.truth_probe:
        tps = [load_truth_probe(lm, cfg.truth_probe)]
    elif cfg.truth:
        tps = truth_probes(lm, layers)
    gens = flags = base = None
    if beh.scorer is None:
        fit_before = pair_margins(lm, fit.cases)
        dirs = contrastive_directions(lm, fit, layers)
        alphas = ALPHAS
    else:
        gens = generations(lm, fit.cases, max_new_tokens=cfg.max_new_tokens)
        fit_before = beh.flags(gens, fit.cases)
        flags = fit_before > 0.5
        dirs = generation_directions(lm, fit.cases, gens, flags, layers)
        alphas = (1.0, 2.0)
        base = own_logprobs(lm, fit.cases, gens)

    def score(proposals) -> list[Candidate]:
        if beh.scorer is None:
            return score_edits(lm, fit, proposals, screen=cfg.screen, keep=max(10, 2 * cfg.top))
        return proxy_edits(lm, fit.cases, gens, flags, proposals, base)

    proposals = direction_edits(dirs, alphas)
    for tp in tps:
        proposals += truth_edits(tp, alphas)
    cands = score(proposals)
    findings, pool = [], []
    if dictionaries:
        if beh.scorer is not None:
            raise UserError("--atlas feature attribution needs bad/good pairs in the bug file")
        findings, pool = feature_findings(lm, dictionaries, fit, labels=labels, top=cfg.features)
        cands += feature_candidates(lm, fit, findings, dictionaries)
    if fit_text is not None and cfg.gated and not cfg.export:  # gated edits cannot be exported

        def best(kind: str, n: int) -> list[tuple[str, AddVector]]:
            cs = [c for c in cands if c.kind == kind and isinstance(c.edit, AddVector)]
            return [(c.name, c.edit) for c in sorted(cs, key=lambda c: c.fit_margin)[:n]]

        vectors = best("bug direction", 2) + best("truth probe", 2)
        gated = probe_gated_edits(lm, tps, vectors, fit_text)
        if findings:
            gated += feature_gated_edits(lm, findings, dictionaries, best("bug direction", 2))
        if beh.scorer is None:
            steer = [c for c in cands if c.kind == "bug direction"]
            steer = [c for c in steer if isinstance(c.edit, AddVector)][:3]
            cands += gated_candidates(lm, fit, steer, fit_text)
        cands += score(gated)
    cands.sort(key=lambda c: c.fit_margin)
    if cfg.export:  # only an edit that folds into weights can be exported
        cands = [c for c in cands if isinstance(c.edit, (ProjectOut, AddVector))]
    return fit_before, cands, findings, pool, tps


FAMILIES = ("truth probe", "gated: truth probe", "gated: feature", "gated: bug direction")
"""Kinds of candidate whose best one is always checked against the budget (and generated with,
for a scorer), even when the fit ranking puts it below the top ones: each family the issue asks
for gets verified, not only ranked by a proxy."""


def choose(
    checked: list[Candidate], beh: Behaviour, fit_before, budget: float
) -> tuple[Candidate | None, Candidate | None]:
    """(the chosen candidate or None, the one whose held-out numbers are reported).

    Fix the bug first, then disturb the model least: the lowest fit bad rate among the edits
    within the side-effect budget that improve on the fit prompts, ties to the smallest added
    loss. Pairs improve when the mean margin falls; a scorer's bug when its rate falls. When none
    passes, the candidate with the lowest fit bad rate (budget ignored; ties: smaller added loss)
    is still judged once on the held-out prompts, marked "not chosen: failed on fit", so a reader
    sees how far it is; it is never exported."""
    fit_bad_before = float(beh.bad(fit_before).double().mean())

    def improves(c: Candidate) -> bool:
        if beh.scorer is None:
            return c.fit_margin < float(fit_before.mean())
        return c.fit_bad_rate < fit_bad_before

    def key(c: Candidate):
        return (c.fit_bad_rate, c.fit_added_nats)

    ok = [c for c in checked if improves(c) and c.fit_added_nats <= budget]
    chosen = min(ok, key=key) if ok else None
    return chosen, chosen or (min(checked, key=key) if checked else None)


def run_fix(
    lm, cfg: FixConfig, *, dictionaries=None, labels=None, progress: bool = True
) -> tuple[FixReport, object | None]:
    """(report, chosen edit or None). `dictionaries` {hook: dictionary} (and `labels`, a
    (hook, feature) -> str function) add feature ablations to the candidates."""
    t0 = time.time()
    secs: dict[str, float] = {}
    fit, held = fit_and_heldout(cfg)
    beh = Behaviour(cfg)
    layers = parse_layers(lm, cfg.layers)
    _say(
        progress, f"{len(fit)} fit and {len(held)} held-out prompts; directions at layers {layers}"
    )
    fit_text = general_text(lm, cfg, "train")
    fit_before, cands, findings, pool, tps = _diagnose(
        lm, cfg, beh, fit, layers, dictionaries, labels, fit_text
    )
    secs["diagnose"] = time.time() - t0
    _say(
        progress,
        f"{len(cands)} candidate edits scored on the fit prompts ({secs['diagnose']:.0f} s)",
    )

    t1 = time.time()
    checked: list[Candidate] = []
    todo = list(cands[: cfg.top])
    for kind in FAMILIES:  # the best of each family is verified too (see FAMILIES)
        first = next((c for c in cands if c.kind == kind), None)
        if first is not None and first not in todo:
            todo.append(first)
    for c in todo:
        bad_rate = c.fit_bad_rate
        if bad_rate != bad_rate:  # NaN: a proxy-ranked candidate, generate with it now
            bad_rate = float(beh.bad(beh.values(lm, fit, c.edit.runtime(lm))).double().mean())
        eff = text_effect(lm, c.edit.runtime(lm), fit_text)
        checked.append(
            Candidate(
                c.name, c.edit, c.layer, c.fit_margin, bad_rate, eff.added_nats.value, c.extra
            )
        )

    chosen, shown = choose(checked, beh, fit_before, cfg.max_added_nats)
    secs["choose"] = time.time() - t1
    done = {c.name for c in checked}
    rows = [
        {
            "name": c.name,
            "kind": c.kind,
            "layer": c.layer,
            "fit_margin": c.fit_margin,
            "fit_bad_rate": None if c.fit_bad_rate != c.fit_bad_rate else c.fit_bad_rate,
            "fit_added_nats": c.fit_added_nats,
        }
        for c in checked + [c for c in cands if c.name not in done]
    ]

    t2 = time.time()
    groups = [c.key for c in held.cases]
    before = beh.values(lm, held)
    report = FixReport(
        bugs=cfg.bugs,
        model=lm.name,
        n_fit=len(fit),
        n_heldout=len(held),
        before_bad_rate=rate(beh.bad(before), groups),
        before_good_rate=rate(beh.good(before), groups),
        fit_before_margin=float(fit_before.mean()),
        candidates=rows,
        chosen=chosen.name if chosen else None,
        fix=None,
        control=None,
        features=[f.to_dict() for f in findings],
        behaviour="margin" if beh.scorer is None else f"scorer:{beh.scorer}",
    )
    report.truth_probes = [tp.to_dict() for tp in tps]
    if chosen is None:
        report.note = (
            f"no candidate improved the fit prompts within --max-added-nats {cfg.max_added_nats}"
        )
        if shown is not None:
            report.status = "not chosen: failed on fit"
            report.note += (
                f"; the best fit candidate ({shown.name}: fit bad rate {shown.fit_bad_rate:.3f}, "
                f"+{shown.fit_added_nats:.3f} nats) is reported on the held-out prompts, not "
                "chosen: failed on fit"
            )
    if shown is not None:
        text = general_text(lm, cfg, "test")
        # A truth probe is fitted on the probe datasets' train entities: its knowledge check
        # then reads only their validation and test entities (no entity it was fitted on).
        splits = ("val", "test") if "truth" in shown.kind else None
        report.knowledge_splits = "val+test" if splits else "all"
        known = knowledge_accuracy(lm, splits=splits) if cfg.knowledge else None
        report.fix = outcome(lm, beh, held, before, shown.edit, text, known, splits)
        control = control_of(shown.edit, cfg.seed, pool=pool)
        report.control = outcome(lm, beh, held, before, control, text, known, splits)
        report.examples = examples(lm, held, shown.edit, control, cfg)
        report.shown = shown.name
    secs["report"] = time.time() - t2
    secs["total"] = time.time() - t0
    report.seconds = secs
    return report, (chosen.edit if chosen else None)


def table_rows(report: FixReport) -> list[tuple[str, str, str, str]]:
    """(measure, before, after the fix, control edit) for the printed report and the card."""
    f, c = report.fix, report.control
    assert f is not None and c is not None
    return [
        ("bad-behaviour rate", report.before_bad_rate.fmt(), f.bad_rate.fmt(), c.bad_rate.fmt()),
        (
            "good-behaviour rate",
            report.before_good_rate.fmt(),
            f.good_rate.fmt(),
            c.good_rate.fmt(),
        ),
        (
            "margin change" if report.behaviour == "margin" else "bad-rate change (paired)",
            "",
            f.margin_change.fmt(),
            c.margin_change.fmt(),
        ),
        ("added nats/token", "", f.text.added_nats.fmt(4), c.text.added_nats.fmt(4)),
        ("KL to the original", "", f.text.kl.fmt(4), c.text.kl.fmt(4)),
        (
            "next-token accuracy",
            f"{f.text.accuracy_before:.3f}",
            f"{f.text.accuracy_after:.3f}",
            f"{c.text.accuracy_after:.3f}",
        ),
    ] + [
        (f"knows: {name}", f"{k['before']:.3f}", _after(k), _after(c.knowledge[name]))
        for name, k in f.knowledge.items()
    ]


def _after(k: dict) -> str:
    return f"{k['after']['value']:.3f} ({k['change']['value']:+.3f})"


def card(report: FixReport) -> str:
    """The model card body: the edit and what was measured."""
    f = report.fix
    assert f is not None
    lines = [
        f"Base model: {report.model}. Bug file: {report.bugs} "
        f"({report.n_fit} fit prompts, {report.n_heldout} held-out prompts).",
        "",
        f"## Edit\n{f.edit}.",
        "",
        "## Measured on held-out prompts and held-out text",
        "| | before | after the fix | control edit |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in table_rows(report)]
    lines += ["", f"General text: {f.text.tokens:,} tokens in {f.text.contexts} held-out contexts."]
    return "\n".join(lines)


__all__ = [
    "FixReport",
    "Outcome",
    "card",
    "control_of",
    "fit_and_heldout",
    "parse_layers",
    "run_fix",
    "table_rows",
]

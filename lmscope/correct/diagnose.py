"""Find what drives a bug: contrastive directions per layer, each with its verified effect.

For a pairs bug file, the direction at layer L is the mean over fit prompts of the residual
stream (blocks.L.resid_post) while the model reads the bad continuation minus while it reads
the good one, averaged over the continuation's positions: the contrastive activation
addition recipe (Panickssery et al. 2024, "Steering Llama 2 via Contrastive Activation
Addition"), with the user's own bad/good pairs as the contrast.

With dictionaries (an atlas of SAEs or transcoders), features are ranked too: on each fit
prompt, trace/attribution.trace gives every active feature's gradient x activation on the
logit difference (bad's token) - (good's token) where the two continuations part (after their
common first tokens, which are appended to the prompt), summed over positions; the
ranking is the mean over fit prompts. Each top feature's prediction is then checked by
ablating it (clamp to 0 where it fires, error term kept) on the fit prompts.

A direction is only a hypothesis until an intervention confirms it. Each one is verified on the
fit prompts (never the held-out ones) with two edits:
- project it out of every residual write (correct/edits.ProjectOut), and
- steer against it at its layer (AddVector(L, -alpha * direction)), alpha from a small grid;
and ranked by how much the mean margin log p(bad) - log p(good) falls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError
from .bugs import BugSet
from .edits import AddVector, FeatureAblation, FeatureGate, Gated, GatedVector, ProjectOut
from .measure import _continuation_ids, pair_margins, prompt_ids

ALPHAS = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Direction:
    layer: int
    vector: Tensor
    """[d_model] raw units: mean(bad) - mean(good) at blocks.{layer}.resid_post."""

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.resid_post"


@dataclass(frozen=True)
class Candidate:
    """One edit tried on the fit prompts."""

    name: str
    edit: ProjectOut | AddVector | GatedVector | Gated | FeatureAblation
    layer: int
    """the direction's layer (-1 for feature ablations)"""
    fit_margin: float
    """Mean margin on the fit prompts with the edit (lower is better)."""
    fit_bad_rate: float
    fit_added_nats: float | None = None
    """Added loss on fit-side general text (filled when a text budget is checked)."""
    extra: dict = field(default_factory=dict)
    """"kind": where the edit comes from ("bug direction", "truth probe", "gated: bug
    direction", "gated: truth probe", "gated: feature", "features"); "screened_on"."""

    @property
    def kind(self) -> str:
        return self.extra.get("kind", "")


@torch.no_grad()
def contrastive_directions(lm, fit: BugSet, layers: Sequence[int]) -> list[Direction]:
    if fit.mode != "pairs":
        raise UserError("contrastive directions need bad/good pairs in the bug file")
    hooks = [f"blocks.{L}.resid_post" for L in layers]
    sums = {L: torch.zeros(lm.d_model, dtype=torch.float64) for L in layers}
    for c in fit.cases:
        p = prompt_ids(lm, c)
        for sign, text in ((1.0, c.bad), (-1.0, c.good)):
            cont = _continuation_ids(lm, text)
            ids = torch.tensor([p + cont], device=lm.device)
            acts = lm.run(ids, capture=hooks).acts
            for L, h in zip(layers, hooks):
                sums[L] += sign * acts[h][0, len(p) : len(p) + len(cont)].double().mean(0).cpu()
    n = len(fit.cases)
    return [Direction(L, (sums[L] / n).float()) for L in layers]


def direction_edits(directions: Sequence[Direction], alphas=ALPHAS) -> list[tuple]:
    """(name, layer, edit, kind) for every bug direction: project it out, steer against it."""
    out: list[tuple] = []
    for d in directions:
        if not float(d.vector.norm()) > 0:
            continue
        label = f"the L{d.layer} bug direction"
        e = ProjectOut(d.vector, label=label)
        out.append((f"project out L{d.layer} direction", d.layer, e, "bug direction"))
        for a in alphas:
            v = AddVector(d.layer, -a * d.vector, label=f"-{a:g} x {label}")
            out.append((f"steer L{d.layer} x{-a:g}", d.layer, v, "bug direction"))
    return out


def score_edits(lm, fit: BugSet, edits, *, screen: int = 0, keep: int = 10) -> list[Candidate]:
    """(name, layer, edit, kind) proposals scored by the fit prompts' margins (best first). With
    `screen` > 0 and more fit prompts than that, all edits are first scored on the first `screen`
    fit prompts and only the best `keep` are scored on all of them (the rest keep their screening
    numbers, flagged in `extra`)."""

    def score(cases, subset) -> list[Candidate]:
        out = []
        for name, layer, e, kind in subset:
            m = pair_margins(lm, cases, e.runtime(lm))
            mean, bad = float(m.mean()), float((m > 0).double().mean())
            out.append(Candidate(name, e, layer, mean, bad, extra={"kind": kind}))
        return sorted(out, key=lambda c: c.fit_margin)

    edits = list(edits)
    if not screen or len(fit.cases) <= screen:
        return score(fit.cases, edits)
    first = score(fit.cases[:screen], edits)
    best = {c.name for c in first[:keep]}
    full = score(fit.cases, [x for x in edits if x[0] in best])
    rest = [
        Candidate(
            c.name,
            c.edit,
            c.layer,
            c.fit_margin,
            c.fit_bad_rate,
            extra={**c.extra, "screened_on": screen},
        )
        for c in first[keep:]
    ]
    return full + rest


def candidates(
    lm,
    fit: BugSet,
    directions: Sequence[Direction],
    *,
    alphas=ALPHAS,
    screen: int = 0,
    keep: int = 10,
) -> list[Candidate]:
    """Every direction's edits, scored on the fit prompts (best first; see score_edits)."""
    return score_edits(lm, fit, direction_edits(directions, alphas), screen=screen, keep=keep)


GATE_QUANTILES = (0.9, 0.99)
"""Gate thresholds tried: these quantiles of the signature on general text (the gate is then
off on 90% / 99% of ordinary positions)."""


@torch.no_grad()
def gated_candidates(lm, fit: BugSet, steering: Sequence[Candidate], text) -> list[Candidate]:
    """Conditional versions of steering candidates: the same vector, only where the projection of
    blocks.L.resid_pre on the direction exceeds a quantile of its values on fit-side general text
    (`text`: contexts of the corpus's train split)."""
    from ..models.tokens import token_mask

    out = []
    for c in steering:
        e = c.edit
        if not isinstance(e, AddVector):
            continue
        hook = f"blocks.{e.layer}.resid_pre"
        u = -e.vector / e.vector.norm()  # the direction itself (the vector steers against it)
        vals = []
        for ctx in text:
            x = lm.run(ctx[None].to(lm.device), capture=[hook]).acts[hook][0].float()
            vals.append((x @ u.to(x.device))[token_mask(lm, ctx[None])[0]].cpu())
        v = torch.cat(vals)
        for q in GATE_QUANTILES:
            thr = float(torch.quantile(v, q))
            g = GatedVector(e, u, thr, label=f"the L{e.layer} bug direction")
            m = pair_margins(lm, fit.cases, g.runtime(lm))
            name = f"{c.name} gated q{q:g}"
            out.append(
                Candidate(
                    name,
                    g,
                    e.layer,
                    float(m.mean()),
                    float((m > 0).double().mean()),
                    extra={"kind": "gated: bug direction"},
                )
            )
    return out


@torch.no_grad()
def generation_directions(lm, cases, gens, flags: Tensor, layers: Sequence[int]) -> list[Direction]:
    """Prompt-only bugs: per layer, the mean of blocks.L.resid_post over the generated tokens of
    the generations the scorer flagged minus the same mean over the ones it did not (each
    generation's mean first, then the mean over generations)."""
    n_bad = int(flags.sum())
    if n_bad == 0 or n_bad == len(flags):
        what = "never fires" if n_bad == 0 else "fires on every one"
        raise UserError(
            f"the scorer {what} of the {len(flags)} fit prompts, so there is no contrast to learn "
            "a fix from; add prompts where the model behaves well and badly"
        )
    hooks = [f"blocks.{L}.resid_post" for L in layers]
    sums = {s: {L: torch.zeros(lm.d_model, dtype=torch.float64) for L in layers} for s in (0, 1)}
    for c, g, f in zip(cases, gens, flags.tolist()):
        if not g.ids:
            continue
        p = prompt_ids(lm, c)
        ids = torch.tensor([p + list(g.ids)], device=lm.device)
        acts = lm.run(ids, capture=hooks).acts
        for L, h in zip(layers, hooks):
            sums[int(f)][L] += acts[h][0, len(p) :].double().mean(0).cpu()
    n_good = sum(1 for g, f in zip(gens, flags.tolist()) if g.ids and not f)
    n_bad = sum(1 for g, f in zip(gens, flags.tolist()) if g.ids and f)
    return [
        Direction(L, (sums[1][L] / max(1, n_bad) - sums[0][L] / max(1, n_good)).float())
        for L in layers
    ]


def proxy_edits(lm, cases, gens, flags: Tensor, edits, base=None) -> list[Candidate]:
    """Prompt-only bugs: (name, layer, edit, kind) proposals ranked by a cheap proxy (no
    generation): how much each makes the flagged generations less likely per token, minus how
    much it makes the good ones less likely (teacher-forced). `fit_margin` holds that proxy (lower
    is better); `fit_bad_rate` is NaN until the candidate is generated with (fix.py does, for the
    best)."""
    from .measure import own_logprobs

    if base is None:
        base = own_logprobs(lm, cases, gens)
    bad, good = flags, ~flags
    out: list[Candidate] = []
    for name, layer, e, kind in edits:
        delta = own_logprobs(lm, cases, gens, e.runtime(lm)) - base
        proxy = float(delta[bad].mean() - delta[good].mean())
        out.append(Candidate(name, e, layer, proxy, float("nan"), extra={"kind": kind}))
    out.sort(key=lambda c: c.fit_margin)
    return out


def generation_candidates(
    lm, cases, gens, flags: Tensor, directions: Sequence[Direction], *, alphas=(1.0, 2.0)
) -> list[Candidate]:
    """Prompt-only bugs: every direction's edits ranked by proxy_edits."""
    return proxy_edits(lm, cases, gens, flags, direction_edits(directions, alphas))


@dataclass(frozen=True)
class FeatureFinding:
    hook: str
    feature: int
    attribution: float
    """mean over fit prompts of the feature's grad x act on logit(bad) - logit(good)"""
    active_on: int
    """fit prompts where it fires"""
    label: str = ""
    ablation_effect: float | None = None
    """measured: mean change of the fit margin when it is ablated (negative = it drove the bug)"""

    def to_dict(self) -> dict:
        return {
            "id": f"{self.hook}/{self.feature}",
            "label": self.label,
            "attribution": self.attribution,
            "active_on": self.active_on,
            "ablation_effect": self.ablation_effect,
        }


def fork(lm, case) -> tuple[list[int], int, int] | None:
    """(the prompt's tokens + the continuations' common first tokens, bad's next token, good's next
    token): where the two continuations part ("Sydney is the capital" / "Sydney is not the
    capital" part after "Sydney is"). None when one continuation starts the other."""
    b, g = _continuation_ids(lm, case.bad), _continuation_ids(lm, case.good)
    k = next((i for i, (x, y) in enumerate(zip(b, g)) if x != y), None)
    if k is None:
        return None
    return prompt_ids(lm, case) + b[:k], b[k], g[k]


def feature_findings(
    lm, dictionaries: dict, fit: BugSet, *, labels=None, top: int = 10
) -> tuple[list[FeatureFinding], list[tuple[str, int]]]:
    """(features ranked by mean attribution toward the bad continuation, ablation-verified;
    every feature active on some fit prompt, for a control draw). The attribution target is
    logit(bad token) - logit(good token) where the two continuations part (fork)."""
    from ..trace.attribution import trace

    total: dict[tuple[str, int], float] = {}
    seen: dict[tuple[str, int], int] = {}
    for c in fit.cases:
        f = fork(lm, c)
        if f is None:
            continue  # no token where they part: no logit difference to attribute
        ids = torch.tensor([f[0]], device=lm.device)  # chat template and common prefix included
        res = trace(lm, dictionaries, c.prompt, target=f[1], vs=f[2], top=10**9, tokens=ids)
        per: dict[tuple[str, int], float] = {}
        for r in res.features:
            per[(r.hook, r.feature)] = per.get((r.hook, r.feature), 0.0) + r.grad_x_act
        for k, v in per.items():
            total[k] = total.get(k, 0.0) + v
            seen[k] = seen.get(k, 0) + 1
    n = max(1, len(fit.cases))
    ranked = sorted(total, key=lambda k: -total[k] / n)[:top]
    base = pair_margins(lm, fit.cases)
    out = []
    for h, f in ranked:
        e = FeatureAblation(((h, f),), dictionaries)
        m = pair_margins(lm, fit.cases, e.runtime(lm))
        out.append(
            FeatureFinding(
                h,
                f,
                total[(h, f)] / n,
                seen[(h, f)],
                (labels(h, f) if labels else "") or "",
                float((m - base).mean()),
            )
        )
    return out, sorted(total)


def feature_candidates(
    lm, fit: BugSet, findings, dictionaries, sizes=(1, 5, 20)
) -> list[Candidate]:
    """Ablate the top 1, 5, 20 features that drove the bug (measured ablation effect < 0)."""
    drivers = [f for f in findings if f.ablation_effect is not None and f.ablation_effect < 0]
    drivers.sort(key=lambda f: f.ablation_effect)
    out = []
    for k in sorted({min(k, len(drivers)) for k in sizes} - {0}):
        feats = tuple((f.hook, f.feature) for f in drivers[:k])
        e = FeatureAblation(feats, dictionaries, label=f"the top {k} bug feature(s)")
        m = pair_margins(lm, fit.cases, e.runtime(lm))
        out.append(
            Candidate(
                f"ablate top {k} features",
                e,
                -1,
                float(m.mean()),
                float((m > 0).double().mean()),
                extra={"kind": "features"},
            )
        )
    return out


def feature_gated_edits(lm, findings, dictionaries, vectors, *, top: int = 2) -> list[tuple]:
    """(name, layer, edit, kind): each steering vector (name, AddVector) gated by each of the
    `top` features whose ablation lowered the fit margin most, where that feature's dictionary
    reads before the vector is added."""
    drivers = sorted(
        (f for f in findings if f.ablation_effect is not None and f.ablation_effect < 0),
        key=lambda f: f.ablation_effect,
    )[:top]
    out = []
    for f in drivers:
        gate = FeatureGate(f.hook, f.feature, dictionaries[f.hook], 0.0, f.label[:60])
        for name, v in vectors:
            if lm.hooks[f.hook].order < lm.hooks[f"blocks.{v.layer}.mlp_out"].order:
                e = Gated(v, gate)
                out.append((f"{name} | {f.hook}/{f.feature} fires", v.layer, e, "gated: feature"))
    return out


__all__ = [
    "ALPHAS",
    "Candidate",
    "Direction",
    "FeatureFinding",
    "candidates",
    "contrastive_directions",
    "direction_edits",
    "feature_candidates",
    "feature_findings",
    "feature_gated_edits",
    "gated_candidates",
    "generation_candidates",
    "generation_directions",
    "proxy_edits",
    "score_edits",
]

"""The truth probe as a diagnosis and a repair: where a bug is a falsehood, steer toward "true".

A truth probe (probe/: a linear read-out of whether the model holds a statement true, Marks &
Tegmark 2023, "The Geometry of Truth") is fitted at each candidate layer on the *train* split of
the probe datasets (true/false statements split by entity; never on the bug's prompts), or read
from a saved probe folder (`lmscope probe train --out DIR`, e.g. a run's RUN/probe). Its unit
direction t (pointing toward "true") gives three kinds of candidate edits:

- steer toward true: AddVector(L, +alpha * gap * t), where gap = (mean over true statements -
  mean over false ones) . t in raw residual units, the distance the probe's own data puts
  between "true" and "false" along t (so alpha = 1 moves a false statement's reading about as
  far as a true one's);
- project the truth direction out of every residual write (does the bug need the model's notion
  of truth?);
- probe-gated steering (edits.Gated + edits.ProbeGate): a steering vector that acts only at
  positions where the probe at layer L scores below a threshold, the vector added at block L+1
  (the gate must be read before the edit). Thresholds tried: the probe's own boundary (0) and
  the 10% / 50% quantiles of its scores on fit-side general text; which one is kept is decided
  on the fit prompts, like every other choice.

The mass-mean probe is used by default: Marks & Tegmark find its direction more causal (steering
along it flips truth judgements) than the logistic one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..probe.probes import Probe, layer_of
from .edits import AddVector, Gated, ProbeGate, ProjectOut

TRUTH_DATASETS = ("cities", "neg_cities", "larger_than", "smaller_than")
"""Statement sets the truth probe is fitted on (train split; `lmscope probe train`'s default)."""
TRUTH_KIND = "massmean"
GATE_QUANTILES = (0.1, 0.5)
"""Probe-gate thresholds besides 0: these quantiles of the probe score on general text (the gate
is then on at 10% / 50% of ordinary positions)."""


@dataclass(frozen=True)
class TruthProbe:
    probe: Probe
    gap: float
    """(mean of true - mean of false statements) . unit direction, raw units (train split)"""
    val_acc: float | None
    """accuracy on the datasets' validation split (None for a loaded probe: see its folder)"""
    source: str

    @property
    def layer(self) -> int:
        return layer_of(self.probe.hook)

    def unit(self) -> torch.Tensor:
        d = self.probe.direction.float()
        return d / d.norm()

    def to_dict(self) -> dict:
        return {
            "hook": self.probe.hook,
            "kind": self.probe.kind,
            "gap": self.gap,
            "val_acc": self.val_acc,
            "source": self.source,
        }


def _datasets(names: Sequence[str]):
    from ..probe.datasets import load_dataset

    return [load_dataset(n) for n in names]


def _gap(x: torch.Tensor, y: torch.Tensor, unit: torch.Tensor) -> float:
    """(mean of x[y == 1] - mean of x[y == 0]) . unit; x: [n, d_model]."""
    return float((x[y == 1].double().mean(0) - x[y == 0].double().mean(0)) @ unit.double())


def truth_probes(
    lm, layers: Sequence[int], datasets: Sequence[str] = TRUTH_DATASETS, kind: str = TRUTH_KIND
) -> list[TruthProbe]:
    """One probe per layer (blocks.L.resid_post), fitted on the datasets' train split and scored
    on their validation split (the test split is not read)."""
    from ..probe.metrics import accuracy
    from ..probe.registry import fit
    from ..probe.sweep import read_split

    hooks = [f"blocks.{L}.resid_post" for L in layers]
    ds = _datasets(datasets)
    tr = read_split(lm, ds, "train", hooks, contrast=False)
    va = read_split(lm, ds, "val", hooks, contrast=False)
    out = []
    for h in hooks:
        p = fit(kind, h, tr.x[h], tr.y)
        t = p.direction.float() / p.direction.float().norm()
        src = f"{kind} probe fitted on the train split of {', '.join(datasets)}"
        out.append(TruthProbe(p, _gap(tr.x[h], tr.y, t), accuracy(p.logits(va.x[h]), va.y), src))
    return out


def load_truth_probe(lm, path: str) -> TruthProbe:
    """A saved probe folder (checked to fit this model); its gap is measured on the train split
    of the datasets it was trained on."""
    from ..probe.artifact import check_compatible, load_probe
    from ..probe.sweep import read_split

    probe, meta = load_probe(path)
    check_compatible(meta, lm, path=path)
    names = meta.get("datasets") or list(TRUTH_DATASETS)
    tr = read_split(lm, _datasets(names), "train", [probe.hook], contrast=False)
    t = probe.direction.float() / probe.direction.float().norm()
    gap = _gap(tr.x[probe.hook], tr.y, t)
    if not gap > 0:
        raise UserError(f"{path}: the probe's direction does not separate true from false")
    return TruthProbe(probe, gap, None, f"{probe.kind} probe read from {path}")


def truth_edits(tp: TruthProbe, alphas: Sequence[float]) -> list[tuple[str, int, object, str]]:
    """(name, layer, edit, kind): steer toward true with each alpha; project the direction out."""
    L, t = tp.layer, tp.unit()
    label = f"the L{L} truth direction"
    out: list[tuple[str, int, object, str]] = [
        (f"truth L{L}: project out", L, ProjectOut(t, label=label), "truth probe")
    ]
    for a in alphas:
        v = AddVector(L, a * tp.gap * t, label=f"+{a:g} x {label} (toward true)")
        out.append((f"truth L{L}: steer +{a:g}", L, v, "truth probe"))
    return out


@torch.no_grad()
def probe_scores(lm, probe: Probe, text) -> torch.Tensor:
    """[tokens] the probe's logits on general text (`text`: [ctx_len] contexts), special
    tokens and position 0 left out."""
    from ..models.tokens import token_mask

    vals = []
    for ctx in text:
        x = lm.run(ctx[None].to(lm.device), capture=[probe.hook]).acts[probe.hook][0].float()
        vals.append(probe.logits(x.cpu())[token_mask(lm, ctx[None])[0].cpu()])
    return torch.cat(vals)


def gate_thresholds(lm, probe: Probe, text) -> list[float]:
    """0 (the probe's boundary) and the GATE_QUANTILES of its scores on general text."""
    if not text:
        return [0.0]
    s = probe_scores(lm, probe, text)
    return [0.0] + [float(torch.quantile(s, q)) for q in GATE_QUANTILES]


def probe_gated_edits(
    lm, tps: Sequence[TruthProbe], vectors: Sequence[tuple[str, AddVector]], text
) -> list[tuple[str, int, Gated, str]]:
    """(name, layer, edit, kind): each steering vector (name, AddVector at block L) gated by the
    truth probe of the deepest layer before L, at each threshold of gate_thresholds. A vector at
    the probe's own layer is moved one block down first (the gate must be read before it)."""
    out = []
    cache: dict[str, list[float]] = {}
    for name, v in vectors:
        if v.layer + 1 < lm.n_layers and not any(tp.layer < v.layer for tp in tps):
            v = AddVector(v.layer + 1, v.vector, label=f"{v.label} at block {v.layer + 1}")
            name = f"{name} at L{v.layer}"
        below = [tp for tp in tps if tp.layer < v.layer]
        if not below:
            continue
        tp = max(below, key=lambda t: t.layer)
        if tp.probe.hook not in cache:
            cache[tp.probe.hook] = gate_thresholds(lm, tp.probe, text)
        for thr in cache[tp.probe.hook]:
            g = ProbeGate.of(tp.probe, thr, label=f"the L{tp.layer} truth probe")
            e = Gated(v, g)
            out.append(
                (f"{name} | truth L{tp.layer} < {thr:+.2g}", v.layer, e, "gated: truth probe")
            )
    return out


__all__ = [
    "TRUTH_DATASETS",
    "TruthProbe",
    "gate_thresholds",
    "load_truth_probe",
    "probe_gated_edits",
    "probe_scores",
    "truth_edits",
    "truth_probes",
]

"""Repairs a finding turns into: edits of the residual stream, at run time and as weights.

An edit is data (a frozen dataclass); `runtime(lm)` gives the hook functions that apply it
to a live model (models.runtime), and correct/weights.py folds the same edit into a copy of
the model's weights, so the repaired model runs without lmscope. The two must agree: the
weight fold is checked against the runtime edit on a calibration input before it is
returned, and the tests check it on every supported family.

- ProjectOut(direction): remove one direction from everything written to the residual
  stream (the embeddings and every attention and MLP output). The residual stream then has
  no component along it anywhere, so nothing downstream can read it (the weight-editing
  form of "directional ablation", Arditi et al. 2024, "Refusal in language models is
  mediated by a single direction").
- AddVector(layer, vector): add a constant vector to what block `layer`'s MLP writes, at
  every position (a steering vector, Turner et al. 2023 / Panickssery et al. 2023). As
  weights it becomes the MLP output projection's bias.
- GatedVector(AddVector, signature, threshold): the steering vector only at positions whose
  residual stream shows the bug's signature (run time only): a conditional fix.
- Gated(AddVector, gate): the steering vector only where a probe (ProbeGate: e.g. the truth
  probe scores the text false) or an atlas feature (FeatureGate: a dictionary latent fires)
  shows the bug's signature (run time only).
- FeatureAblation(features): clamp dictionary features to 0 where they fire (run time only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError

Edit = Callable[[Tensor], Tensor]


def _unit(v: Tensor, what: str) -> Tensor:
    v = v.detach().to(torch.float32).flatten()
    n = float(v.norm())
    if not n > 0 or n != n:
        raise UserError(f"{what} has zero (or non-finite) norm; give a non-zero direction")
    return v / n


@dataclass(frozen=True)
class ProjectOut:
    """Remove `direction` from every write to the residual stream (embeddings included)."""

    direction: Tensor
    """[d_model]; normalised on use."""
    layers: tuple[int, ...] | None = None
    """Blocks whose attention and MLP writes are projected (None: all, and the embeddings).
    With a subset, the embeddings are projected only if 0 is in it."""
    label: str = ""

    def unit(self) -> Tensor:
        return _unit(self.direction, "the direction to project out")

    def blocks(self, n_layers: int) -> list[int]:
        layers = range(n_layers) if self.layers is None else self.layers
        bad = [L for L in layers if not 0 <= L < n_layers]
        if bad:
            raise UserError(f"layer {bad[0]} does not exist: the model has layers 0-{n_layers - 1}")
        return sorted(set(layers))

    def runtime(self, lm) -> dict[str, Edit]:
        u = self.unit()

        def project(x: Tensor) -> Tensor:
            v = u.to(device=x.device, dtype=x.dtype)
            return x - (x @ v)[..., None] * v

        blocks = self.blocks(lm.n_layers)
        edits = {"embed": project} if 0 in blocks else {}
        for L in blocks:
            edits[f"blocks.{L}.attn_out"] = project
            edits[f"blocks.{L}.mlp_out"] = project
        return edits

    def describe(self) -> str:
        where = "every layer" if self.layers is None else f"layers {list(self.layers)}"
        return f"project out {self.label or 'a direction'} from the residual writes of {where}"


@dataclass(frozen=True)
class AddVector:
    """Add `vector` to block `layer`'s MLP output at every position."""

    layer: int
    vector: Tensor
    """[d_model], in the residual stream's raw units."""
    label: str = ""

    def runtime(self, lm) -> dict[str, Edit]:
        if not 0 <= self.layer < lm.n_layers:
            raise UserError(
                f"layer {self.layer} does not exist: the model has layers 0-{lm.n_layers - 1}"
            )
        v0 = self.vector.detach().flatten()
        if v0.numel() != lm.d_model:
            raise UserError(
                f"the vector has {v0.numel()} numbers but the model's residual stream has "
                f"{lm.d_model}"
            )

        def add(x: Tensor) -> Tensor:
            return x + v0.to(device=x.device, dtype=x.dtype)

        return {f"blocks.{self.layer}.mlp_out": add}

    def describe(self) -> str:
        norm = float(self.vector.norm())
        return (
            f"add {self.label or 'a vector'} (norm {norm:.3g}) to block {self.layer}'s MLP output"
        )


def _gated_runtime(lm, vector: AddVector, hook: str, fires) -> dict[str, Edit]:
    """The hooks of `vector` acting only at the positions where `fires(x)` ([batch, pos,
    d_model] -> bool [batch, pos]) holds for the activation x at `hook`, which must run before
    the vector's MLP output in the same forward pass (so the gate of a position is known when
    that position's edit is applied; with a KV cache each step gates its new positions)."""
    inner = vector.runtime(lm)
    ((out_hook, add),) = inner.items()
    if hook not in lm.hooks.points:
        raise UserError(f"the gate reads {hook}, which model {lm.name} does not have")
    if not lm.hooks[hook].order < lm.hooks[out_hook].order:
        raise UserError(
            f"the gate reads {hook}, which runs after the edit it gates ({out_hook}); gate on a "
            "hook of an earlier layer"
        )
    seen: dict[str, Tensor] = {}

    def remember(x: Tensor) -> Tensor:
        seen["gate"] = fires(x)
        return x

    def gated(x: Tensor) -> Tensor:
        on = seen["gate"][..., None].to(x.dtype)
        return x + on * (add(x) - x)

    return {hook: remember, out_hook: gated}


@dataclass(frozen=True)
class GatedVector:
    """An AddVector that acts only where the bug's signature is present: at positions where the
    residual stream entering block `vector.layer` (blocks.L.resid_pre) has a projection on
    `signature` above `threshold`. Runtime only (a threshold is no linear weight)."""

    vector: AddVector
    signature: Tensor
    """[d_model]; normalised on use"""
    threshold: float
    label: str = ""

    def runtime(self, lm) -> dict[str, Edit]:
        u = _unit(self.signature, "the gate's signature direction")

        def fires(x: Tensor) -> Tensor:
            return (x @ u.to(device=x.device, dtype=x.dtype)) > self.threshold

        return _gated_runtime(lm, self.vector, f"blocks.{self.vector.layer}.resid_pre", fires)

    def describe(self) -> str:
        return (
            f"{self.vector.describe()}, only where the layer-{self.vector.layer} residual's "
            f"projection on {self.label or 'the bug signature'} exceeds {self.threshold:.3g}"
        )


@dataclass(frozen=True)
class ProbeGate:
    """Fires where a linear probe's score at `hook` is below `threshold`: for a truth probe
    (probe/probes.Probe: logit = (x - mean) . direction + bias, > 0 = "held true"), where the
    model does not hold what it reads true, the signature of a falsehood."""

    hook: str
    direction: Tensor
    """[d_model], raw units (the probe's own scale)"""
    mean: Tensor
    """[d_model], the probe's centring mean"""
    bias: float
    threshold: float
    label: str = "the truth probe"

    @classmethod
    def of(cls, probe, threshold: float, label: str = "") -> ProbeGate:
        """A gate from a probe/probes.Probe."""
        return cls(
            probe.hook,
            probe.direction.detach().float(),
            probe.mean.detach().float(),
            float(probe.bias),
            float(threshold),
            label or f"the {probe.hook} truth probe",
        )

    def score(self, x: Tensor) -> Tensor:
        """[batch, pos, d_model] -> [batch, pos] probe logits (computed in float32)."""
        d, m = self.direction.to(x.device), self.mean.to(x.device)
        return (x.float() - m) @ d + self.bias

    def fires(self, x: Tensor) -> Tensor:
        return self.score(x) < self.threshold

    def describe(self) -> str:
        return f"{self.label} scores below {self.threshold:.3g}"


@dataclass(frozen=True)
class FeatureGate:
    """Fires where a dictionary latent (an atlas feature) is active above `threshold` at its
    dictionary's input hook."""

    hook: str
    """the dictionary's input hook (as listed in the atlas)"""
    feature: int
    dictionary: object = field(compare=False, repr=False, default=None)
    threshold: float = 0.0
    label: str = ""

    def fires(self, x: Tensor) -> Tensor:
        d = self.dictionary
        b, p, _ = x.shape
        with torch.no_grad():
            a = d.encode(x.reshape(b * p, -1).to(d.W_enc.dtype))[:, self.feature]
        return (a > self.threshold).reshape(b, p)

    def describe(self) -> str:
        name = f"feature {self.hook}/{self.feature}" + (f" ({self.label})" if self.label else "")
        return f"{name} fires above {self.threshold:.3g}"


@dataclass(frozen=True)
class Gated:
    """An AddVector that acts only at positions where `gate` fires (a probe's score or a
    dictionary feature: only act when the bug's signature is present). Runtime only: a
    threshold on a probe or on an encoder is no linear weight, so weights.fold refuses it and
    an export never holds it."""

    vector: AddVector
    gate: ProbeGate | FeatureGate
    label: str = ""

    def runtime(self, lm) -> dict[str, Edit]:
        if isinstance(self.gate, FeatureGate) and self.gate.dictionary is None:
            raise UserError(f"no dictionary at {self.gate.hook} for the feature gate")
        return _gated_runtime(lm, self.vector, self.gate.hook, self.gate.fires)

    def describe(self) -> str:
        return f"{self.vector.describe()}, only where {self.gate.describe()}"


@dataclass(frozen=True)
class FeatureAblation:
    """Clamp dictionary features to 0 wherever they fire, keeping the dictionary's error term
    (steer/interventions.feature_edits). Runtime only: it needs the dictionary's encoder, which
    no weight of the model can hold, so weights.fold refuses it."""

    features: tuple[tuple[str, int], ...]
    """(dictionary input hook, feature index) pairs"""
    dictionaries: dict = field(compare=False, repr=False, default_factory=dict)
    label: str = ""

    def runtime(self, lm) -> dict[str, Edit]:
        from ..steer.interventions import FeatureIntervention, feature_edits

        for hook, _ in self.features:
            if hook not in self.dictionaries:
                raise UserError(f"no dictionary at {hook} for the feature ablation")
        ivs = [FeatureIntervention(h, f, "clamp", 0.0) for h, f in self.features]
        return feature_edits(ivs, self.dictionaries)

    def describe(self) -> str:
        ids = ", ".join(f"{h}/{f}" for h, f in self.features[:5])
        more = f" and {len(self.features) - 5} more" if len(self.features) > 5 else ""
        return f"ablate {self.label or 'features'} ({ids}{more}) wherever they fire"


@dataclass(frozen=True)
class EditSet:
    """Several edits applied together (their runtime hooks compose in order)."""

    edits: tuple[ProjectOut | AddVector | GatedVector | Gated | FeatureAblation, ...] = field(
        default_factory=tuple
    )

    def runtime(self, lm) -> dict[str, Edit]:
        out: dict[str, Edit] = {}
        for e in self.edits:
            for hook, f in e.runtime(lm).items():
                g = out.get(hook)
                out[hook] = f if g is None else (lambda x, f=f, g=g: f(g(x)))
        return out

    def describe(self) -> str:
        return "; ".join(e.describe() for e in self.edits) or "no edit"


RUNTIME_ONLY = (GatedVector, Gated, FeatureAblation)
"""Edits that need a threshold or an encoder at run time: never folded into weights or saved."""


def edit_tensors(edits) -> tuple[dict[str, Tensor], dict[str, str]]:
    """An EditSet as safetensors (tensors, metadata), so a repair can be re-applied at run time
    or audited: edit i is `edit.{i}.direction` (ProjectOut) or `edit.{i}.vector` (AddVector)."""
    es = as_edit_set(edits)
    tensors: dict[str, Tensor] = {}
    meta: dict[str, str] = {"format": "lmscope-edits", "version": "1", "n": str(len(es.edits))}
    for i, e in enumerate(es.edits):
        if isinstance(e, RUNTIME_ONLY):
            raise UserError(f"a run-time-only edit ({type(e).__name__}) is not saved")
        if isinstance(e, ProjectOut):
            tensors[f"edit.{i}.direction"] = e.direction.detach().float().contiguous()
            meta[f"edit.{i}"] = json.dumps(
                {"kind": "project_out", "layers": e.layers, "label": e.label}
            )
        else:
            tensors[f"edit.{i}.vector"] = e.vector.detach().float().contiguous()
            meta[f"edit.{i}"] = json.dumps(
                {"kind": "add_vector", "layer": e.layer, "label": e.label}
            )
    return tensors, meta


def load_edits(path) -> EditSet:
    """Read an EditSet written with edit_tensors (plain tensors: nothing in the file runs code)."""
    from safetensors import safe_open

    out: list[ProjectOut | AddVector] = []
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "lmscope-edits":
            raise UserError(f"{path} is not an lmscope edit file")
        for i in range(int(meta["n"])):
            m = json.loads(meta[f"edit.{i}"])
            if m["kind"] == "project_out":
                layers = tuple(m["layers"]) if m["layers"] is not None else None
                out.append(ProjectOut(f.get_tensor(f"edit.{i}.direction"), layers, m["label"]))
            else:
                out.append(AddVector(m["layer"], f.get_tensor(f"edit.{i}.vector"), m["label"]))
    return EditSet(tuple(out))


def as_edit_set(edits: EditSet | ProjectOut | AddVector | Sequence) -> EditSet:
    if isinstance(edits, EditSet):
        return edits
    if isinstance(edits, (ProjectOut, AddVector, *RUNTIME_ONLY)):
        return EditSet((edits,))
    return EditSet(tuple(edits))


__all__ = [
    "AddVector",
    "EditSet",
    "FeatureAblation",
    "FeatureGate",
    "Gated",
    "GatedVector",
    "ProbeGate",
    "RUNTIME_ONLY",
    "ProjectOut",
    "as_edit_set",
    "edit_tensors",
    "load_edits",
]

"""One steering request, end to end: feature specs + an optional steering vector -> edits -> compare.

    res = steer(lm, dictionaries, "I think dogs are", features=["blocks.6.resid_post/12=+8"],
                vector=VectorSpec("Love", "Hate", layer=6, coeff=5), max_new_tokens=30,
                targets=[" great"])                     # a Comparison (side by side + probabilities)

`lmscope steer` and the viewer's steer page both call `steer()`, so they cannot drift apart.
Feature interventions need dictionaries (an atlas); a steering vector needs only the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import UserError
from .generate import Comparison, compare
from .interventions import feature_edits, parse_interventions
from .vectors import SteeringVector, steering_vector, vector_edits

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


@dataclass(frozen=True)
class VectorSpec:
    """A contrastive steering vector to build and add (ActAdd by default)."""

    positive: str
    negative: str
    layer: int
    """Read and added at blocks.{layer}.{site}."""
    coeff: float = 5.0
    mode: Literal["actadd", "mean"] = "actadd"
    """actadd: position-wise difference at the first positions; mean: last-token difference everywhere."""
    site: Literal["resid_pre", "resid_post"] = "resid_pre"

    def __post_init__(self) -> None:
        if self.mode not in ("actadd", "mean"):
            raise UserError(f"vector mode must be 'actadd' or 'mean', got {self.mode!r}")
        if self.site not in ("resid_pre", "resid_post"):
            raise UserError(f"vector site must be 'resid_pre' or 'resid_post', got {self.site!r}")
        if not math.isfinite(self.coeff):
            raise UserError(f"the steering coefficient must be a finite number, got {self.coeff}")
        if not self.positive.strip() or not self.negative.strip():
            raise UserError("both contrastive prompts of the steering vector must be non-empty")


@dataclass
class SteerPlan:
    """The edits for `hooked` and a readable name for each intervention."""

    edits: dict
    interventions: list[str]
    vector: SteeringVector | None = None
    coeff: float | None = None


def plan(lm: LanguageModel, dictionaries: dict[str, SparseDictionary], features: list[str] = (), vector: VectorSpec | None = None) -> SteerPlan:
    """Parse feature specs (HOOK/INDEX=V) and build the vector; UserError on anything wrong."""
    if not features and vector is None:
        raise UserError("nothing to steer with: give a feature intervention (HOOK/INDEX=V) "
                        "and/or a steering vector (POSITIVE NEGATIVE)")
    if features and not dictionaries:
        raise UserError("feature interventions need an atlas (its dictionaries); without one, steer "
                        "with a vector only")
    ivs = parse_interventions(list(features), dictionaries)
    edits = feature_edits(ivs, dictionaries)
    names = [str(iv) for iv in ivs]
    sv = None
    if vector is not None:
        sv = steering_vector(lm, vector.positive, vector.negative, layer=vector.layer, mode=vector.mode,
                             site=vector.site)
        for hook, fn in vector_edits(sv, vector.coeff).items():
            prev = edits.get(hook)
            edits[hook] = fn if prev is None else (lambda x, a=prev, b=fn: b(a(x)))
        names.append(f"{vector.coeff:g} x ({vector.positive!r} - {vector.negative!r}) at {sv.hook} [{sv.mode}]")
    return SteerPlan(edits, names, sv, vector.coeff if vector else None)


def steer(lm: LanguageModel, dictionaries: dict[str, SparseDictionary], prompt: str, *, features: list[str] = (), vector: VectorSpec | None = None,
          max_new_tokens: int = 30, temperature: float = 0.0, seed: int = 0, targets: list[str] = (),
          top: int = 5) -> Comparison:
    """Generate with and without the interventions; probabilities of `targets` and the top next tokens."""
    from ..trace import resolve_target

    if max_new_tokens < 0:
        raise UserError(f"the number of tokens to generate must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be >= 0, got {temperature}")
    p = plan(lm, dictionaries, features, vector)
    ids = [resolve_target(lm, t) for t in targets]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    for t, i in zip(targets, ids):
        if not 0 <= i < vocab:
            raise UserError(f"target {t!r} is not a token id of this model (0..{vocab - 1})")
    cmp = compare(lm, prompt, p.edits, interventions=p.interventions, max_new_tokens=max_new_tokens,
                  temperature=temperature, seed=seed, targets=ids, top=top)
    if p.vector is not None:
        cmp.vector = p.vector.to_dict() | {"coeff": p.coeff}
    return cmp

"""One steering request, end to end: feature specs + an optional steering vector -> edits ->
compare.

    res = steer(lm, dictionaries, "I think dogs are", features=["blocks.6.resid_post/12=+8"],
                vector=VectorSpec("Love", "Hate", layer=6, coeff=5), max_new_tokens=30,
                targets=[" great"])                     # a Comparison (side by side +
                probabilities)

`lmscope steer` and the viewer's steer page both call `steer()`, so they cannot drift apart.
Feature interventions need dictionaries (an atlas); a steering vector needs only the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..config import flag
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
    """actadd: position-wise difference at the first positions; mean: last-token difference
    everywhere."""
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


@dataclass(frozen=True)
class SteerConfig:
    """`lmscope steer`: generate with and without interventions, side by side."""

    where: tuple[str, ...] = flag(nargs="+", metavar="[ATLAS] PROMPT")
    """atlas folder (needed for --feature; optional with --vector and --model) and the prompt"""
    feature: tuple[str, ...] = flag((), action="append", metavar="HOOK/INDEX=V")
    """a feature intervention (repeatable): =8 clamp, =+8 add, =-8, =*2 scale, =0 ablate"""
    vector: tuple[str, str] | None = flag(None, nargs=2, metavar=("POSITIVE", "NEGATIVE"))
    """contrastive prompts for a steering vector, e.g. --vector Love Hate"""
    layer: int | None = None
    """layer of the steering vector (blocks.LAYER.<site>)"""
    coeff: float = 5.0
    """steering vector coefficient"""
    vector_mode: Literal["actadd", "mean"] = "actadd"
    """actadd: position-wise difference added at the first positions (Turner et al. 2023); mean:
    last-token difference added at every position (CAA-style)"""
    site: Literal["resid_pre", "resid_post"] = "resid_pre"
    """where the steering vector is read and added"""
    generate: int = 30
    """new tokens to generate"""
    temperature: float = 0.0
    """sampling temperature: 0 = greedy; > 0 samples"""
    seed: int = 0
    """sampling seed (the same for both runs)"""
    target: tuple[str, ...] = flag((), action="append")
    """report this next token's probability with and without the intervention (repeatable)"""
    model: str | None = None
    """override the atlas's model, or without an atlas the model to steer (alias, folder, hub id,
    .gguf)"""
    device: str = "cpu"
    """torch device"""

    def __post_init__(self) -> None:
        if len(self.where) > 2:
            raise ValueError(
                f"steer takes [ATLAS] PROMPT, got {len(self.where)} positional "
                "arguments; quote the prompt"
            )
        if not self.feature and not self.vector:
            raise ValueError(
                "nothing to steer with: pass --feature HOOK/INDEX=V and/or --vector "
                "POSITIVE NEGATIVE"
            )
        if self.vector and self.layer is None:
            raise ValueError(
                "--vector needs --layer L (the steering vector is read and added at "
                "blocks.L.resid_pre)"
            )
        if self.generate < 0:
            raise ValueError("--generate must be >= 0")

    @property
    def atlas(self) -> str | None:
        return self.where[0] if len(self.where) == 2 else None

    @property
    def prompt(self) -> str:
        return self.where[-1]

    def vector_spec(self) -> VectorSpec | None:
        if not self.vector:
            return None
        pos, neg = self.vector
        return VectorSpec(pos, neg, self.layer, self.coeff, self.vector_mode, self.site)


@dataclass
class SteerPlan:
    """The edits for `hooked` and a readable name for each intervention."""

    edits: dict
    interventions: list[str]
    vector: SteeringVector | None = None
    coeff: float | None = None


def plan(
    lm: LanguageModel,
    dictionaries: dict[str, SparseDictionary],
    features: list[str] = (),
    vector: VectorSpec | None = None,
) -> SteerPlan:
    """Parse feature specs (HOOK/INDEX=V) and build the vector; UserError on anything wrong."""
    if not features and vector is None:
        raise UserError(
            "nothing to steer with: give a feature intervention (HOOK/INDEX=V) "
            "and/or a steering vector (POSITIVE NEGATIVE)"
        )
    if features and not dictionaries:
        raise UserError(
            "feature interventions need an atlas (its dictionaries); without one, steer "
            "with a vector only"
        )
    ivs = parse_interventions(list(features), dictionaries)
    edits = feature_edits(ivs, dictionaries)
    names = [str(iv) for iv in ivs]
    sv = None
    if vector is not None:
        sv = steering_vector(
            lm,
            vector.positive,
            vector.negative,
            layer=vector.layer,
            mode=vector.mode,
            site=vector.site,
        )
        for hook, fn in vector_edits(sv, vector.coeff).items():
            prev = edits.get(hook)
            edits[hook] = fn if prev is None else (lambda x, a=prev, b=fn: b(a(x)))
        names.append(
            f"{vector.coeff:g} x ({vector.positive!r} - {vector.negative!r}) at {sv.hook} "
            f"[{sv.mode}]"
        )
    return SteerPlan(edits, names, sv, vector.coeff if vector else None)


def steer(
    lm: LanguageModel,
    dictionaries: dict[str, SparseDictionary],
    prompt: str,
    *,
    features: list[str] = (),
    vector: VectorSpec | None = None,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
    targets: list[str] = (),
    top: int = 5,
) -> Comparison:
    """Generate with and without the interventions; probabilities of `targets` and the top next
    tokens."""
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
    cmp = compare(
        lm,
        prompt,
        p.edits,
        interventions=p.interventions,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        targets=ids,
        top=top,
    )
    if p.vector is not None:
        cmp.vector = p.vector.to_dict() | {"coeff": p.coeff}
    return cmp

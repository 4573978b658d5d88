"""Feature interventions that keep the dictionary's error term.

With a dictionary at hook h, x = decode(acts) + err where err = x - decode(acts) is
whatever the dictionary misses. An intervention changes some latents, acts -> acts', and
the model then sees decode(acts') + err = x + sum_f (a'_f - a_f) W_dec[f] (the skip term
of a skip transcoder does not depend on acts). So only the intervened features change,
and an empty intervention leaves x exactly as it was (SAELens / Neuronpedia steering;
Templeton et al. 2024 clamp features the same way).

Spec syntax (one feature per --feature flag):

    HOOK/INDEX=8      clamp: a_f := 8 at every position
    HOOK/INDEX=+8     add:   a_f := a_f + 8  (= adding 8 x the decoder row; Neuronpedia steering)
    HOOK/INDEX=-3     add a negative amount
    HOOK/INDEX=*2     scale: a_f := 2 a_f
    HOOK/INDEX=0      ablate (clamp to 0)
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..dictionaries.dictmath import decoder_rows
from ..errors import UserError
from ..trace.attribution import out_hook, resolve_feature_id

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary

_SPEC = re.compile(r"^(?P<feat>[^=]+)=(?P<op>[+*-]?)(?P<num>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)$")


@dataclass(frozen=True)
class FeatureIntervention:
    hook: str
    """The dictionary's input hook (as listed in the atlas)."""
    feature: int
    op: Literal["clamp", "add", "scale"]
    value: float

    def new_value(self, a: torch.Tensor) -> torch.Tensor:
        """[batch, pos] current activations -> intervened activations."""
        if self.op == "clamp":
            return torch.full_like(a, self.value)
        if self.op == "add":
            return a + self.value
        return a * self.value

    def __str__(self) -> str:
        sym = {"clamp": "=", "add": "=+", "scale": "=*"}[self.op]
        v = self.value
        if self.op == "add" and v < 0:
            sym = "="
        return f"{self.hook}/{self.feature}{sym}{v:g}"


def parse_interventions(
    specs: list[str], dictionaries: dict[str, SparseDictionary]
) -> list[FeatureIntervention]:
    """'HOOK/INDEX=+8' strings -> interventions; UserError (with close matches) for unknown
    features."""
    out = []
    for spec in specs:
        m = _SPEC.match(spec.strip().replace(" ", ""))
        if not m:
            raise UserError(
                f"cannot read feature intervention {spec!r}: use HOOK/INDEX=8 (clamp), =+8 (add), "
                "=-8, =*2 (scale) or =0 (ablate)"
            )
        hook, f = resolve_feature_id(m.group("feat"), dictionaries)
        op, num = m.group("op"), float(m.group("num"))
        if op == "+":
            out.append(FeatureIntervention(hook, f, "add", num))
        elif op == "-":
            out.append(FeatureIntervention(hook, f, "add", -num))
        elif op == "*":
            out.append(FeatureIntervention(hook, f, "scale", num))
        else:
            out.append(FeatureIntervention(hook, f, "clamp", num))
    return out


def feature_edits(
    interventions: list[FeatureIntervention],
    dictionaries: dict[str, SparseDictionary],
    positions: slice | None = None,
) -> dict:
    """Edits for `lmscope.models.runtime.hooked`: one per hook, all features there at once.

    The dictionary encodes the activation at its input hook; the change is added where its
    decoder writes (the same hook for an SAE, mlp_out for a transcoder, whose input is
    then read from a companion edit on mlp_in).
    """
    by_dict: dict[str, list[FeatureIntervention]] = defaultdict(list)
    for iv in interventions:
        by_dict[iv.hook].append(iv)
    edits: dict = {}
    for hook, ivs in by_dict.items():
        d = dictionaries[hook]
        idx = torch.tensor([iv.feature for iv in ivs])
        rows = decoder_rows(d)[idx]  # [n, d_out] raw decoder rows
        src, dst = d.cfg.hook_name, out_hook(d)
        seen: dict[str, torch.Tensor] = {}

        def delta(x_in: torch.Tensor, ivs=ivs, idx=idx, rows=rows, d=d) -> torch.Tensor:
            """[batch, pos, d_out] what the intervention adds, from the dictionary input x_in."""
            b, p, _ = x_in.shape
            with torch.no_grad():
                a = d.encode(x_in.reshape(b * p, -1).to(d.W_enc.dtype))[:, idx].reshape(b, p, -1)
                new = torch.stack([iv.new_value(a[..., j]) for j, iv in enumerate(ivs)], -1)
                diff = new - a  # [batch, pos, n]
                if positions is not None:
                    keep = torch.zeros(p, dtype=torch.bool)
                    keep[positions] = True
                    diff = diff * keep[None, :, None].to(diff.device)
            return (diff @ rows.to(diff.dtype)).to(x_in.dtype)

        if src == dst:
            edits[dst] = _compose(edits.get(dst), lambda x, delta=delta: x + delta(x))
        else:

            def remember(x, seen=seen, src=src):
                seen[src] = x
                return x

            edits[src] = _compose(edits.get(src), remember)
            edits[dst] = _compose(
                edits.get(dst), lambda x, delta=delta, seen=seen, src=src: x + delta(seen[src])
            )
    return edits


def _compose(first, second):
    if first is None:
        return second
    return lambda x: second(first(x))

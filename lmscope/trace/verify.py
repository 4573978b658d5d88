"""Check attributions by intervention: ablate features (error term kept) and measure the target.

Ablating feature f of a dictionary at hook h with its error term kept replaces the
activation x by decode(acts with a_f = 0) + (x - decode(acts)) = x - a_f W_dec[f] (the
skip term does not depend on acts), at the position where f fired. The measured change
of the target (logit or logit difference at the last position) is reported beside the
predicted one, -grad_x_act: gradient x activation is the first-order Taylor estimate of
exactly this intervention, so they agree when the model is near-linear along it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from ..dictionaries.dictmath import decoder_rows
from ..models.runtime import run
from .attribution import TraceResult, out_hook

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


def ablation_edits(lm: LanguageModel, dictionaries: dict[str, SparseDictionary], feats) -> dict:
    """Edits removing what each (hook, feature, pos, activation) writes, error kept."""
    by_hook: dict[str, list] = defaultdict(list)
    for f in feats:
        by_hook[out_hook(dictionaries[f.hook])].append(f)
    edits = {}
    for hook, fs in by_hook.items():
        rows = []
        for f in fs:
            d = dictionaries[f.hook]
            rows.append((f.pos, f.activation * decoder_rows(d)[f.feature].float()))

        def edit(x, rows=rows):
            y = x.clone()
            for p, v in rows:
                y[:, p] = y[:, p] - v.to(x.dtype)
            return y

        edits[hook] = edit
    return edits


def target_value(lm: LanguageModel, tokens, res: TraceResult, edits=None) -> float:
    """The target logit (or logit difference) at the last position, under `edits`."""
    logits = run(lm, tokens, edits=edits or {}, logits=True).logits[0, -1].float()
    v = logits[res.target_id]
    if res.vs_id is not None:
        v = v - logits[res.vs_id]
    return float(v)


def verify(
    lm: LanguageModel, dictionaries: dict[str, SparseDictionary], res: TraceResult, *, top: int = 5
) -> list[dict]:
    """Ablate the top features one at a time and jointly; predicted vs actual change of the
    target."""
    tokens = lm.to_tokens(res.prompt)
    base = target_value(lm, tokens, res)
    out = []
    feats = res.features[:top]
    for f in feats:
        actual = target_value(lm, tokens, res, ablation_edits(lm, dictionaries, [f])) - base
        out.append(
            {
                "id": f.id,
                "pos": f.pos,
                "predicted": -f.grad_x_act,
                "predicted_dla": -f.dla,
                "actual": actual,
            }
        )
    if len(feats) > 1:
        actual = target_value(lm, tokens, res, ablation_edits(lm, dictionaries, feats)) - base
        out.append(
            {
                "id": f"top {len(feats)} jointly",
                "pos": None,
                "predicted": -sum(f.grad_x_act for f in feats),
                "predicted_dla": -sum(f.dla for f in feats),
                "actual": actual,
            }
        )
    res.verification = out
    return out

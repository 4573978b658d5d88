"""`--vs`: the features that differ most between two prompts (what changed in the model's "brain").

Each prompt is encoded by the one reading engine (`Reader.encode`); a feature's strength on a
prompt is its largest activation over the prompt's tokens (BOS excluded), so prompts of
different lengths compare. Features are ranked by |strength A - strength B|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..dictionaries.feature_id import format_feature_id
from .scan import Reader


@dataclass(frozen=True)
class FeatureDiff:
    """One feature's strength on prompt A and prompt B (max activation over tokens)."""

    hook: str
    feature: int
    act_a: float
    act_b: float
    token_a: str | None
    token_b: str | None
    label: str | None = None

    @property
    def diff(self) -> float:
        return self.act_a - self.act_b

    @property
    def id(self) -> str:
        return format_feature_id(self.hook, self.feature)

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id, "diff": self.diff}


@dataclass
class CompareResult:
    prompt_a: str
    prompt_b: str
    diffs: list[FeatureDiff]
    """Strongest differences first; diff > 0 means stronger on A."""

    def to_dict(self) -> dict:
        return {
            "prompt_a": self.prompt_a,
            "prompt_b": self.prompt_b,
            "diffs": [d.to_dict() for d in self.diffs],
        }


def _strength(
    reader: Reader, prompt: str
) -> tuple[list[str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    tokens, feats = reader.encode(prompt)
    strs = reader.lm.to_str_tokens(tokens[0])
    start = 1 if tokens.shape[1] > 1 and int(tokens[0, 0]) == reader.lm.bos_token_id else 0
    out = {}
    for hook, f in feats.items():
        best, where = f[start:].max(dim=0)  # [d_sae], argmax position
        out[hook] = (best.clamp(min=0), where + start)
    return strs, out


def compare(reader: Reader, prompt_a: str, prompt_b: str, *, top: int = 20) -> CompareResult:
    """The `top` features whose max activation differs most between the two prompts."""
    strs_a, sa = _strength(reader, prompt_a)
    strs_b, sb = _strength(reader, prompt_b)
    cands = []
    for hook in reader.hooks:
        (a, wa), (b, wb) = sa[hook], sb[hook]
        delta = (a - b).abs()  # [d_sae]
        vals, idx = delta.topk(min(top, delta.numel()))
        for v, i in zip(vals.tolist(), idx.tolist()):
            if v <= 0:
                break
            cands.append(
                (
                    v,
                    hook,
                    i,
                    float(a[i]),
                    float(b[i]),
                    strs_a[int(wa[i])] if a[i] > 0 else None,
                    strs_b[int(wb[i])] if b[i] > 0 else None,
                )
            )
    cands.sort(key=lambda c: -c[0])
    diffs = [
        FeatureDiff(hook, i, fa, fb, ta, tb, reader.label(hook, i))
        for _, hook, i, fa, fb, ta, tb in cands[:top]
    ]
    return CompareResult(prompt_a, prompt_b, diffs)

"""`--vs`: what changed in the model's "brain" between two prompts.

Each prompt is encoded by the one reading engine (`Reader.encode`). Two views:

- The features that differ most: a feature's strength on a prompt is its largest activation over
  the prompt's tokens (BOS excluded), so prompts of different lengths compare. Ranked by
  |strength A - strength B|, divided by the layer's mean activity per token over the atlas corpus
  when the atlas DB has it for every layer (so layers of different scales compete fairly).
- The diff map (`DiffMap`, layers x token positions): prompts are aligned by position (token p of
  A against token p of B; BOS against BOS). Cell = how much that layer's features at that
  position changed, 0..1: sum_i |a_i - b_i| / (sum_i a_i + sum_i b_i) over the dictionary's
  feature activations a (prompt A) and b (prompt B) at that position (0 = the same features at
  the same strengths, 1 = no feature in common; 0 when neither fires). It is scale-free, so
  layers compare without a reference. Also `activity_diff`: A's minus B's activity in units of
  the layer's corpus mean (None without an atlas DB). When the token counts differ, only the
  first min(len A, len B) positions are compared and the extra tokens of the longer prompt are
  listed (`note`); a causal model's positions after the first changed token all see the change,
  so the map shows where it starts and how far through the layers it spreads.
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
class DiffMap:
    """Layers x aligned positions: how much each dictionary's features changed (see module doc)."""

    hooks: list[str]
    tokens_a: list[str]
    tokens_b: list[str]
    change: list[list[float]]
    """[n_hooks][n_aligned] in [0, 1]: sum|a - b| / (sum a + sum b) of the position's features."""
    activity_diff: list[list[float | None]]
    """[n_hooks][n_aligned] activity A - activity B in units of the layer's corpus mean."""
    first_diff: int | None
    """First position whose token differs (None: one prompt is a prefix of the other)."""
    note: str | None = None
    """How the prompts were aligned when their token counts differ."""

    @property
    def n_aligned(self) -> int:
        return min(len(self.tokens_a), len(self.tokens_b))

    def layer_change(self, skip_first: bool = True) -> list[float]:
        """Per layer, the mean change over the aligned positions (BOS excluded)."""
        out = []
        for row in self.change:
            r = row[1:] if skip_first and len(row) > 1 else row
            out.append(sum(r) / len(r) if r else 0.0)
        return out

    def to_dict(self) -> dict:
        return {
            "hooks": self.hooks,
            "tokens_a": self.tokens_a,
            "tokens_b": self.tokens_b,
            "n_aligned": self.n_aligned,
            "change": self.change,
            "activity_diff": self.activity_diff,
            "layer_change": self.layer_change(),
            "first_diff": self.first_diff,
            "note": self.note,
        }


@dataclass
class CompareResult:
    prompt_a: str
    prompt_b: str
    diffs: list[FeatureDiff]
    """Strongest differences first; diff > 0 means stronger on A."""
    map: DiffMap | None = None
    """The layers x positions diff map."""

    def to_dict(self) -> dict:
        out = {
            "prompt_a": self.prompt_a,
            "prompt_b": self.prompt_b,
            "diffs": [d.to_dict() for d in self.diffs],
        }
        if self.map is not None:
            out["map"] = self.map.to_dict()
        return out


def _strength(
    reader: Reader, tokens: torch.Tensor, feats: dict[str, torch.Tensor]
) -> tuple[list[str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    strs = reader.lm.to_str_tokens(tokens[0])
    start = 1 if tokens.shape[1] > 1 and int(tokens[0, 0]) == reader.lm.bos_token_id else 0
    out = {}
    for hook, f in feats.items():
        best, where = f[start:].max(dim=0)  # [d_sae], argmax position
        out[hook] = (best.clamp(min=0), where + start)
    return strs, out


def feature_change(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """[pos, d_sae] x2 -> [pos]: sum|a - b| / (sum a + sum b) over features (negatives clipped
    to 0 as in the scan's activity); 0 where neither fires."""
    a, b = fa.clamp(min=0).double(), fb.clamp(min=0).double()
    num = (a - b).abs().sum(1)
    den = a.sum(1) + b.sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(den))


def diff_map(
    reader: Reader,
    tokens_a: torch.Tensor,
    feats_a: dict[str, torch.Tensor],
    tokens_b: torch.Tensor,
    feats_b: dict[str, torch.Tensor],
) -> DiffMap:
    """The layers x positions diff map of two encoded prompts (aligned by position)."""
    strs_a = reader.lm.to_str_tokens(tokens_a[0])
    strs_b = reader.lm.to_str_tokens(tokens_b[0])
    n = min(len(strs_a), len(strs_b))
    refs = reader.layer_ref()
    change, act_diff = [], []
    for hook in reader.hooks:
        fa, fb = feats_a[hook][:n], feats_b[hook][:n]  # [n, d_sae]
        change.append(feature_change(fa, fb).tolist())
        ref = refs.get(hook)
        if ref:
            d = (fa.clamp(min=0).sum(1) - fb.clamp(min=0).sum(1)) / ref
            act_diff.append(d.tolist())
        else:
            act_diff.append([None] * n)
    ids_a, ids_b = tokens_a[0].tolist(), tokens_b[0].tolist()
    first = next((p for p in range(n) if ids_a[p] != ids_b[p]), None)
    note = None
    if len(strs_a) != len(strs_b):
        longer, extra = ("A", strs_a[n:]) if len(strs_a) > len(strs_b) else ("B", strs_b[n:])
        note = (
            f"token counts differ ({len(strs_a)} vs {len(strs_b)}): positions 0-{n - 1} are "
            f"compared; {longer}'s last {len(extra)} token(s) have no partner: {extra!r}"
        )
    return DiffMap(list(reader.hooks), strs_a, strs_b, change, act_diff, first, note)


def compare(reader: Reader, prompt_a: str, prompt_b: str, *, top: int = 20) -> CompareResult:
    """The `top` features whose max activation differs most between the two prompts, and the
    layers x positions diff map."""
    tok_a, feats_a = reader.encode(prompt_a)
    tok_b, feats_b = reader.encode(prompt_b)
    strs_a, sa = _strength(reader, tok_a, feats_a)
    strs_b, sb = _strength(reader, tok_b, feats_b)
    # Rank across layers in units of each layer's corpus mean activity when the atlas has it:
    # raw activations differ ~50x in scale between SmolLM2's layers, and the raw ranking was all
    # blocks.11 and blocks.28.
    refs = reader.layer_ref()
    scale = {h: (1.0 / refs[h] if all(k in refs for k in reader.hooks) else 1.0) for h in refs}
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
                    v * scale.get(hook, 1.0),
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
    return CompareResult(
        prompt_a, prompt_b, diffs, diff_map(reader, tok_a, feats_a, tok_b, feats_b)
    )

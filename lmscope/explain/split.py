"""The honest split of a feature's stored examples: what the explainer sees vs what scorers judge.

The atlas keeps top activating windows, quantile samples (one reservoir per activation octave) and
non-activating windows per feature. Activating windows are pooled (top first, then quantiles from
high to low buckets, duplicates of the same corpus token dropped) and dealt alternately: even
positions go to the explainer, odd positions are held out for scoring, so both halves span the
whole activation range (Paulo et al. 2024: quantile sampling generalizes better than top-only).
Negatives are never shown to an explainer; all of them go to the scorers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..atlas.db import Example, FeatureProfile


@dataclass
class Split:
    shown: list[Example]
    """activating windows the explainer may read"""
    held_pos: list[Example]
    """held-out activating windows (scorers only)"""
    held_neg: list[Example]
    """non-activating windows (scorers only)"""


def split_examples(p: FeatureProfile) -> Split:
    seen: set = set()
    pool: list[Example] = []
    for e in list(p.top) + list(p.quantiles):
        key = e.token_index if e.token_index is not None else (tuple(e.tokens), e.position)
        if key in seen or e.score <= 0:
            continue
        seen.add(key)
        pool.append(e)
    return Split(shown=pool[0::2], held_pos=pool[1::2], held_neg=list(p.negatives))


def token_key(tok: str) -> str:
    """Compare tokens by their visible word: strip BPE space markers and case."""
    return tok.replace("Ġ", " ").replace("▁", " ").strip().lower()


def window_text(e: Example) -> str:
    """A window as plain text (special tokens dropped) for embedding or judging."""
    out = []
    for t in e.tokens:
        if t.startswith("<") and t.endswith(">") and len(t) < 16 and " " not in t:
            continue  # <bos>, <eos>, <|im_end|>, ...
        out.append(t)
    joined = "".join(out)
    return joined if " " in joined else " ".join(out)  # word-level tokenizers carry no spaces

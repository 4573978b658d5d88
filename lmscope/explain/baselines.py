"""Baseline explanations, scored by the same scorers, so a method's score means something.

- `baseline-random`: the label another feature got from the same method (a shuffled assignment;
  Paulo et al. 2024 report ~0.51 detection accuracy for random explanations).
- `baseline-toptoken`: the single token at the peak of the top shown example.
A method is only claimed to work where its scores beat both.
"""

from __future__ import annotations

from .split import Split, token_key

RANDOM = "baseline-random"
TOPTOKEN = "baseline-toptoken"
VERSION = "1"


def top_token_label(split: Split) -> str | None:
    if not split.shown:
        return None
    e = split.shown[0]
    k = token_key(e.tokens[e.position]) if 0 <= e.position < len(e.tokens) else ""
    return k or None


def random_partner(i: int, n: int, seed: int = 0) -> int | None:
    """A deterministic other index in 0..n-1 (never i itself)."""
    if n < 2:
        return None
    import random

    off = random.Random(seed * 1_000_003 + i).randrange(1, n)
    return (i + off) % n

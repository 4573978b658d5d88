"""Baseline explanations, scored by the same scorers on the same held-out windows, so a method's
score means something (docs/measuring.md: fair baselines).

- `baseline-random`: the label (text and token list) another feature got from the SAME method (a
  shuffled assignment inside a batch; Paulo et al. 2024 report ~0.51 detection accuracy for random
  explanations). Stored with `details["for"] = method`, so the baselines of two methods never pool.
- `baseline-toptoken`: the equal-budget top-token label: the `BUDGET` tokens with the highest
  activations in the SHOWN windows (the label names at most 3 tokens too), plus the label's own
  output part (`| says ...`), so the comparison isolates how the label chose its input tokens.
A method is only claimed to work where the paired difference to each baseline is above 0
(report.py).
"""

from __future__ import annotations

from .split import Split, token_key

RANDOM = "baseline-random"
TOPTOKEN = "baseline-toptoken"
VERSION = "2"
BUDGET = 3
"""tokens the top-token baseline may name (the stats explainer's MAX_TOKENS)"""


def top_tokens(split: Split, k: int = BUDGET) -> list[str]:
    """The k distinct tokens (by `token_key`) with the highest activation anywhere in the shown
    windows."""
    best: dict[str, float] = {}
    for e in split.shown:
        for t, a in zip(e.tokens, e.acts):
            key = token_key(t)
            if a > 0 and key and a > best.get(key, 0.0):
                best[key] = a
    return [t for t, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def top_token_label(
    split: Split, says: list[str] | None = None, k: int = BUDGET
) -> tuple[str, list[str]] | None:
    """(label text, token list) of the equal-budget baseline, or None when nothing fired in
    shown."""
    toks = top_tokens(split, k)
    if not toks:
        return None
    text = ", ".join(toks)
    if says:
        text += " | says " + ", ".join(f'"{s}"' for s in says)
    return text, toks


def random_partner(i: int, n: int, seed: int = 0) -> int | None:
    """A deterministic other index in 0..n-1 (never i itself)."""
    if n < 2:
        return None
    import random

    off = random.Random(seed * 1_000_003 + i).randrange(1, n)
    return (i + off) % n

"""Fuzzing scorer (LLM judge): are the marked tokens the ones the label describes?

Up to `n` held-out activating windows spread over the activation range (detection.across_quantiles;
delphi: 50), each shown twice: with its real active tokens marked (above 0.3 x its
max) and with the same number of other tokens marked at random (seeded). Balanced accuracy of the
judge's Yes/No over the real vs fuzzed copies.
"""

from __future__ import annotations

import random

from ...atlas.db import Example
from ..llm_client import LLMClient
from ..prompts import MARK_FRACTION, fuzzing_messages, mark, parse_yes_no
from ..split import Held
from . import ScoreResult, balanced_accuracy

NAME = "fuzzing"


def fuzzed(e: Example, seed: int) -> Example | None:
    peak = max(e.acts) if e.acts else 0.0
    on = [i for i, a in enumerate(e.acts) if peak > 0 and a >= MARK_FRACTION * peak]
    off = [
        i
        for i in range(len(e.tokens))
        if i not in on and not (e.tokens[i].startswith("<") and e.tokens[i].endswith(">"))
    ]
    if not on or len(off) < len(on):
        return None
    pick = set(random.Random(seed).sample(off, len(on)))
    acts = [1.0 if i in pick else 0.0 for i in range(len(e.tokens))]
    return Example(e.kind, e.tokens, acts, e.position, 1.0, e.bucket, e.token_ids, e.token_index)


def score_fuzzing(
    client: LLMClient, text: str, held: Held, n: int = 50, seed: int = 0
) -> ScoreResult:
    from .detection import across_quantiles

    pred, truth, invalid = [], [], 0
    for i, e in enumerate(across_quantiles(held.pos, n)):
        f = fuzzed(e, seed + i)
        if f is None:
            continue
        for ex, t in ((e, True), (f, False)):
            a = parse_yes_no(client.chat(fuzzing_messages(text, mark(ex)), max_tokens=3))
            invalid += a is None
            pred.append(bool(a))
            truth.append(t)
    n_pos = sum(truth)
    v = balanced_accuracy(pred, truth) if n_pos else float("nan")
    return ScoreResult(
        NAME,
        "balanced_accuracy",
        v,
        n_pos,
        len(truth) - n_pos,
        {"invalid_answers": invalid, "asked": n},
    )

"""Detection scorer (LLM judge): given the label, does this unmarked held-out window fire the
feature?

Up to `n_pos` held-out activating windows spread over the activation range (`across_quantiles`:
evenly spaced in activation rank, so not only the top ones; delphi samples activation quantiles)
and up to `n_neg` non-activating windows (delphi: 50 + 50). Balanced accuracy of the judge's Yes/No
(mean of the recall on both classes, so unequal counts do not favour "always No"). Answers that are
neither count as No (listed in details).
"""

from __future__ import annotations

from ...atlas.db import Example
from ..llm_client import LLMClient
from ..prompts import detection_messages, parse_yes_no
from ..split import Held
from . import ScoreResult, balanced_accuracy

NAME = "detection"


def across_quantiles(windows: list[Example], n: int) -> list[Example]:
    """At most n windows, evenly spaced over the activation ranking (highest first); all if
    fewer."""
    ranked = sorted(windows, key=lambda e: -e.score)
    if len(ranked) <= n:
        return ranked
    if n == 1:
        return ranked[:1]
    return [ranked[round(i * (len(ranked) - 1) / (n - 1))] for i in range(n)]


def score_detection(
    client: LLMClient, text: str, held: Held, n_pos: int = 50, n_neg: int = 50
) -> ScoreResult:
    pos, neg = across_quantiles(held.pos, n_pos), held.neg[:n_neg]
    items = [(e, True) for e in pos] + [(e, False) for e in neg]
    pred, truth, invalid = [], [], 0
    for e, t in items:
        a = parse_yes_no(client.chat(detection_messages(text, e), max_tokens=3))
        invalid += a is None
        pred.append(bool(a))
        truth.append(t)
    v = balanced_accuracy(pred, truth) if pos and neg else float("nan")
    return ScoreResult(
        NAME,
        "balanced_accuracy",
        v,
        len(pos),
        len(neg),
        {"invalid_answers": invalid, "asked_pos": n_pos, "asked_neg": n_neg},
    )

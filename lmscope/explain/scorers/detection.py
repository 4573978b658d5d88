"""Detection scorer (LLM judge): given the label, does this unmarked held-out window fire the feature?

Held-out activating windows vs non-activating ones, balanced by truncating to the smaller count;
balanced accuracy of the judge's Yes/No. Answers that are neither count as No (listed in details).
"""

from __future__ import annotations

from ..llm_client import LLMClient
from ..prompts import detection_messages, parse_yes_no
from ..split import Held
from . import ScoreResult, balanced_accuracy

NAME = "detection"


def score_detection(client: LLMClient, text: str, held: Held, n: int = 5) -> ScoreResult:
    m = min(n, len(held.pos), len(held.neg))
    items = [(e, True) for e in held.pos[:m]] + [(e, False) for e in held.neg[:m]]
    pred, truth, invalid = [], [], 0
    for e, t in items:
        a = parse_yes_no(client.chat(detection_messages(text, e), max_tokens=3))
        invalid += a is None
        pred.append(bool(a))
        truth.append(t)
    v = balanced_accuracy(pred, truth) if m else float("nan")
    return ScoreResult(NAME, "balanced_accuracy", v, m, m, {"invalid_answers": invalid})

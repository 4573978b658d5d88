"""Triage: spend LLM calls only where the offline label is weak.

An LLM label costs ~1 explainer call plus the judges' calls per feature; on a whole-model atlas
(70k+ features) that is real money. The stats label (stats_explainer.py) already records how well it
predicts firing on the feature's VALIDATION windows (`details["valid_choice"]["score"]`, token-level
balanced accuracy; never the test windows, so the features sent to the LLM are not selected on the
numbers the report then compares). A feature goes to the LLM when
- that validation score is below `threshold` (the label does not predict held-out firing), or
- the label fits what it was shown far better than what it was not (shown balanced accuracy minus
  validation balanced accuracy above `DISAGREE`: the two offline readings of one label disagree), or
- it has no validation windows to judge by (nothing is known).
Features are ordered weakest first, so a `--budget` that runs out has spent its calls where the
offline label is worst.
"""

from __future__ import annotations

from dataclasses import dataclass

DISAGREE = 0.2


@dataclass(frozen=True)
class TriageItem:
    hook: str
    feature: int
    valid: float | None
    """validation balanced accuracy of the stats label (None: no validation windows)"""
    reason: str
    """low | disagree | unknown"""


def stats_reading(p, split, labeller=None) -> tuple[float | None, float | None]:
    """(validation score, shown score) of the feature's stats label, computed now (no scoring)."""
    from .concepts import bal_acc, predict
    from .stats_explainer import explain_stats

    e = explain_stats(p, split, labeller)
    v = e.choice.get("score")
    shown = bal_acc(*predict(split.shown, set(e.tokens), e.concept, e.context, None))
    return v, shown


def triage(
    db, feats: list[tuple[str, int]], threshold: float, split_cfg=None, labeller=None
) -> list[TriageItem]:
    """The features of `feats` to send to the LLM, weakest offline label first."""
    from .split import SplitConfig, split_examples

    out = []
    for h, i in feats:
        p = db.feature(h, i)
        sp = split_examples(p, split_cfg or SplitConfig())
        v, shown = stats_reading(p, sp, labeller)
        if v is None:
            out.append(TriageItem(h, i, None, "unknown"))
        elif v < threshold:
            out.append(TriageItem(h, i, v, "low"))
        elif shown is not None and shown - v > DISAGREE:
            out.append(TriageItem(h, i, v, "disagree"))
    return sorted(out, key=lambda t: (t.valid if t.valid is not None else -1.0, t.hook, t.feature))

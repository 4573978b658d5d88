"""Direct scorer (no LLM): does the label's token set predict firing, token by token, on held-out text?

Every token of the held-out windows (activating windows and non-activating ones) is one trial:
positive if the feature fires there (> 0), predicted positive if its word is one the label names
(stats_explainer.label_tokens). Reports balanced accuracy (mean of recall on firing tokens and
specificity on silent ones), so a label that names every word or none scores 0.5.
"""

from __future__ import annotations

from ..split import Split, token_key
from ..stats_explainer import label_tokens
from . import ScoreResult, balanced_accuracy

NAME = "direct"


def score_direct(text: str, split: Split) -> ScoreResult:
    words = label_tokens(text)
    pred, truth = [], []
    for e in split.held_pos + split.held_neg:
        for t, a in zip(e.tokens, e.acts if e.acts else [0.0] * len(e.tokens)):
            pred.append(token_key(t) in words)
            truth.append(a > 0)
    n_pos = sum(truth)
    tp = sum(p and t for p, t in zip(pred, truth))
    npred = sum(pred)
    return ScoreResult(NAME, "balanced_accuracy", balanced_accuracy(pred, truth), n_pos, len(truth) - n_pos,
                       {"precision": round(tp / npred, 4) if npred else 0.0,
                        "recall": round(tp / n_pos, 4) if n_pos else 0.0,
                        "unit": "token", "held_windows": len(split.held_pos), "neg_windows": len(split.held_neg)})

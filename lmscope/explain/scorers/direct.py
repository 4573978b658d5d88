"""Direct scorer (no LLM): does the label's token set predict firing, token by token, on held-out
text?

Every token of the held-out windows (activating windows and non-activating ones) is one trial:
positive if the feature fires there (> 0), predicted positive if its word is one the label names.
Reports balanced accuracy (mean of recall on firing tokens and specificity on silent ones), so a
label that names every word or none scores 0.5.

The contract for the token set: a token-based label (the stats explainer's, the top-token
baseline's)
is scored by its STRUCTURED token list (`details["tokens"]`, compared with `split.token_key`),
exactly as it was chosen: "," "." "the" "is" are legitimate feature tokens. A stop list applies only
to free text (an LLM's label), where "the" or "token" are words of the sentence, not the feature's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..split import Held, count_trials, token_key
from . import ScoreResult

NAME = "direct"


def free_text_tokens(text: str) -> set[str]:
    """The input-side words of a free-text label: the part before '| says' / 'says' and '| after',
    split on commas and whitespace, quotes and function words dropped."""
    head = text.split("| says")[0].split("says ")[0] if "says" in text else text
    head = head.split("| after")[0]
    words = set()
    for w in head.replace(",", " ").replace("|", " ").split():
        w = token_key(w.strip("\"'`.;:()[]{}<>"))
        if w and w not in STOP:
            words.add(w)
    return words


STOP = {
    "the",
    "a",
    "an",
    "of",
    "on",
    "in",
    "word",
    "words",
    "token",
    "tokens",
    "about",
    "and",
    "or",
    "fires",
    "feature",
    "this",
    "mentions",
    "related",
    "to",
    "for",
    "with",
    "is",
    "text",
}
"""Function and meta words of a free-text label (never applied to a structured token list)."""


@dataclass(frozen=True)
class Trials:
    """A held-out part's tokens as counts per word: how many fire (pos) and how many do not (neg).
    A label predicts "fires" for a whole word at once, so its confusion counts are sums over the
    label's words: O(label words) per label instead of O(held-out tokens)."""

    pos: dict[str, int]
    neg: dict[str, int]
    n_pos: int
    n_neg: int


def trials(held: Held) -> Trials:
    """The trials of every held-out token, shared by a feature's label and baselines."""
    pos: Counter = Counter()
    neg: Counter = Counter()
    count_trials(held.pos + held.neg, pos, neg)
    return Trials(dict(pos), dict(neg), sum(pos.values()), sum(neg.values()))


def trials_reference(held: Held) -> tuple[list[str], list[bool]]:
    """(word, fires?) of every held-out token, one by one (the tests' reference)."""
    keys, truth = [], []
    for e in held.pos + held.neg:
        keys += [token_key(t) for t in e.tokens]
        truth += [a > 0 for a in (e.acts if e.acts else [0.0] * len(e.tokens))]
    return keys, truth


def score_direct(
    text: str, held: Held, tokens: list[str] | None = None, prepared: Trials | None = None
) -> ScoreResult:
    """`tokens`: the label's structured token list (token-based labels); None = parse free `text`.
    `prepared`: trials(held), when the caller scores several labels on the same part."""
    words = {token_key(t) for t in tokens} - {""} if tokens is not None else free_text_tokens(text)
    tr = prepared if prepared is not None else trials(held)
    n_pos = tr.n_pos
    tp = sum(tr.pos.get(w, 0) for w in words)
    npred = tp + sum(tr.neg.get(w, 0) for w in words)
    fp = npred - tp
    tpr = tp / n_pos if n_pos else 0.0
    tnr = (tr.n_neg - fp) / tr.n_neg if tr.n_neg else 0.0
    return ScoreResult(
        NAME,
        "balanced_accuracy",
        (tpr + tnr) / 2,  # = balanced_accuracy(pred, truth) token by token (a test pins it)
        n_pos,
        tr.n_neg,
        {
            "precision": round(tp / npred, 4) if npred else 0.0,
            "recall": round(tp / n_pos, 4) if n_pos else 0.0,
            "unit": "token",
            "held_windows": len(held.pos),
            "neg_windows": len(held.neg),
            "tokens_from": "structured" if tokens is not None else "free_text",
        },
    )

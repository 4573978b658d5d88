"""Simulation scorer (no LLM): how well does the label predict the activation of every held-out token?

In the spirit of OpenAI's explanation simulation (Bills et al. 2023), which asks a model to predict
each token's activation from the explanation and reports the correlation with the true activations
over all tokens at once ("all at once" score), here without an LLM: the predicted activation of a
token is the cosine between the token read in its context (its contextual embedding, from
token_embeddings.py) and the label (label_vector). Score = Pearson correlation between predicted and
true activations over every distinct held-out token of the feature (activating and non-activating
windows). It judges what the label MEANS, not which exact tokens it spells out: "horse" predicts
" pony" a little, a label of word pieces predicts little.
"""

from __future__ import annotations

import numpy as np

from ..split import Held, span
from ..token_embeddings import TokenEmbeddings
from . import ScoreResult

NAME = "simulation"


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc, yc = x - x.mean(), y - y.mean()
    den = float(np.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def held_tokens(held: Held) -> tuple[np.ndarray, np.ndarray]:
    """(global ids, true activations) of every distinct held-out token (non-activating windows: 0)."""
    act: dict[int, float] = {}
    for e in held.pos + held.neg:
        s = span(e)
        if s is None:
            continue
        for g, a in zip(range(*s), e.acts if e.acts else [0.0] * len(e.tokens)):
            act[g] = max(act.get(g, 0.0), float(a))
    ids = np.fromiter(act, dtype=np.int64, count=len(act))
    return ids, np.fromiter(act.values(), dtype=np.float64, count=len(act))


def score_simulation(label: np.ndarray, held: Held, te: TokenEmbeddings, tokens=None) -> ScoreResult:
    """`label`: the label's unit vector; `tokens`: (ids, acts) from held_tokens (shared by baselines)."""
    ids, acts = tokens if tokens is not None else held_tokens(held)
    n_pos = int((acts > 0).sum())
    if n_pos == 0 or n_pos == len(acts):
        return ScoreResult(NAME, "pearson", float("nan"), n_pos, len(acts) - n_pos,
                           {"skipped": "no firing or no silent held-out token"})
    pred = te.tokens(ids) @ label  # [n] cosine per token
    return ScoreResult(NAME, "pearson", pearson(pred, acts), n_pos, len(acts) - n_pos, {"unit": "token"})

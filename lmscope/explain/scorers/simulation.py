"""Simulation scorer (no LLM): how well does the label predict the activation of every held-out
token?

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

from ..token_embeddings import HeldVectors
from . import ScoreResult, matvec

NAME = "simulation"


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc, yc = x - x.mean(), y - y.mean()
    den = float(np.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def score_simulation(label: np.ndarray, hv: HeldVectors) -> ScoreResult:
    """`label`: the label's unit vector; `hv`: the feature's held-out tokens as vectors
    (TokenEmbeddings.held: every distinct token once, with its true activation)."""
    n_pos = int((hv.acts > 0).sum())
    if n_pos == 0 or n_pos == len(hv.acts):
        return ScoreResult(
            NAME,
            "pearson",
            float("nan"),
            n_pos,
            len(hv.acts) - n_pos,
            {"skipped": "no firing or no silent held-out token"},
        )
    pred = matvec(hv.tokens, label)  # [t] cosine per token
    return ScoreResult(
        NAME, "pearson", pearson(pred, hv.acts), n_pos, len(hv.acts) - n_pos, {"unit": "token"}
    )

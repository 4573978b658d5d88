"""Generalization matrix: probes (rows) scored on the test split of statement sets (columns).

    rows = [("cities", fit_on_set(lm, "cities", hook, "logistic")), ...]   # or saved probes
    m = accuracy_matrix(lm, rows, ["cities", "neg_cities", "arithmetic"])

A row probe fitted here sees only the train split of its set; every cell is
scored on the test split of the column's set (entities never used for
fitting), with accuracy at the probe's own zero logit, AUROC, and 95%
bootstrap intervals over the column's entities. A cell whose set shares a
domain with the row's training set (cities / neg_cities) is still out of
sample: the domains split their entities alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .activations import last_token_acts
from .datasets import load_dataset
from .metrics import Score, accuracy_score, auroc_score
from .probes import Probe
from .registry import fit

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass(frozen=True)
class Cell:
    acc: Score
    auroc: Score


def fit_on_set(lm: LanguageModel, name: str, hook: str, kind: str, *, batch_size: int = 32, seed: int = 0) -> Probe:
    """A probe of `kind` at `hook` fitted on the train split of one built-in set."""
    ds = load_dataset(name)
    texts = [s.text for s in ds.train] + ([s.contrast for s in ds.train] if kind == "ccs" else [])
    x = last_token_acts(lm, texts, [hook], batch_size=batch_size)[hook]  # [n (+ n), d_model]
    m = len(ds.train)
    y = torch.tensor([s.label for s in ds.train])
    return fit(kind, hook, x[:m], y, x[m:] if kind == "ccs" else None, seed=seed)


def accuracy_matrix(lm: LanguageModel, rows: list[tuple[str, Probe]], tests: list[str], *, batch_size: int = 32,
                    seed: int = 0) -> dict[str, dict[str, Cell]]:
    """{row label: {test set: Cell}} on the test split of each test set."""
    out: dict[str, dict[str, Cell]] = {label: {} for label, _ in rows}
    for n in tests:
        ds = load_dataset(n)
        hooks = sorted({p.hook for _, p in rows})
        x = last_token_acts(lm, [s.text for s in ds.test], hooks, batch_size=batch_size)
        y = torch.tensor([s.label for s in ds.test])
        ents = [s.entity for s in ds.test]
        for label, probe in rows:
            logits = probe.logits(x[probe.hook])
            out[label][n] = Cell(acc=accuracy_score(logits, y, ents, seed=seed),
                                 auroc=auroc_score(logits, y, ents, seed=seed))
    return out


__all__ = ["Cell", "accuracy_matrix", "fit_on_set"]

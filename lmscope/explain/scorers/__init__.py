"""Scorers: each judges one explanation on held-out examples and returns a ScoreResult."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScoreResult:
    scorer: str
    metric: str
    """balanced_accuracy | auroc"""
    value: float
    n_pos: int
    n_neg: int
    details: dict = field(default_factory=dict)


def matvec(m, v):
    """m @ v without BLAS: a fixed-order single-thread sum (numpy's einsum loop). OpenBLAS splits a
    large matrix-vector product over its threads and the split changes the last bits (a 2-core and
    a 1-thread run of the same atlas differed in ~1e-9 of the scores), and in `--workers` processes
    its spinning threads took as much CPU as the scoring itself (docs/explain.md "Speed")."""
    import numpy as np

    return np.einsum("td,d->t", m, v)


def balanced_accuracy(pred: list[bool], truth: list[bool]) -> float:
    pos = [p for p, t in zip(pred, truth) if t]
    neg = [p for p, t in zip(pred, truth) if not t]
    tpr = sum(pos) / len(pos) if pos else 0.0
    tnr = (len(neg) - sum(neg)) / len(neg) if neg else 0.0
    return (tpr + tnr) / 2


def auroc(scores: list[float], truth: list[bool]) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    t = np.asarray(truth, dtype=bool)
    pos, neg = s[t], s[~t]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # rank-sum (Mann-Whitney U) with average ranks for ties
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    # ties share the mean of their 1-based ranks: (first + last) / 2 + 1 per run of equal values
    new = np.r_[True, allv[1:] != allv[:-1]]
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(allv) - 1]
    ranks = np.repeat((first + last) / 2 + 1, last - first + 1)
    r = np.empty(len(allv))
    r[order] = ranks
    u = r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))

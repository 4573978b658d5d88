"""Scores of a probe and their uncertainty: accuracy, AUROC, bootstrap intervals over entities.

The probe test sets are small (19 held-out cities, 9 held-out numbers), so
every score is reported with a percentile bootstrap interval whose resampling
unit is the *entity* (a city brings both its true and its false statement, or
both answers of the lie evaluation), the unit at which a split could leak
(docs/measuring.md: intervals for small samples). With 9-19 entities these intervals are wide:
read them, not the third decimal.

    s = score(values=y_hat == y, groups=entities)             # Score(value, lo, hi, n, n_units)
    a = auroc(scores, labels)                                 # Mann-Whitney U / (n_pos n_neg)
    d = paired_difference(a_fn, b_fn, groups)                 # Score of a - b over the same
    resamples
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Score:
    """A score with its sample size and a bootstrap interval over entities."""

    value: float
    lo: float
    hi: float
    n: int
    """Items scored (statements or answers)."""
    n_units: int
    """Entities resampled by the bootstrap (cities, numbers, addend pairs, ...)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    pos, neg = scores[labels == 1].double(), scores[labels == 0].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]  # [n_pos, n_neg]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of items whose decision (logit > 0) equals the label."""
    return (
        float(((logits > 0).long() == labels.long()).double().mean())
        if len(labels)
        else float("nan")
    )


def _resamples(groups: Sequence, n_boot: int, seed: int) -> list[torch.Tensor]:
    """n_boot index tensors, each the items of len(units) units drawn with replacement."""
    units: dict = {}
    for i, g in enumerate(groups):
        units.setdefault(g, []).append(i)
    members = [torch.tensor(v) for v in units.values()]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_boot):
        pick = torch.randint(len(members), (len(members),), generator=gen)
        out.append(torch.cat([members[int(j)] for j in pick]))
    return out


def _interval(values: list[float], level: float) -> tuple[float, float]:
    v = torch.tensor([x for x in values if x == x], dtype=torch.float64)  # drop NaN resamples
    if not len(v):
        return float("nan"), float("nan")
    q = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


def bootstrap(
    stat: Callable[[torch.Tensor], float],
    groups: Sequence,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Score:
    """stat(item indices) on all items, with a percentile interval from resampling whole groups."""
    everything = torch.arange(len(groups))
    value = stat(everything)
    lo, hi = _interval([stat(idx) for idx in _resamples(groups, n_boot, seed)], level)
    return Score(value=value, lo=lo, hi=hi, n=len(groups), n_units=len(set(groups)))


def paired_difference(
    stat_a: Callable[[torch.Tensor], float],
    stat_b: Callable[[torch.Tensor], float],
    groups: Sequence,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Score:
    """a - b on the same items and the same resamples (a paired difference; 'a beats b' means lo >
    0)."""
    return bootstrap(
        lambda idx: stat_a(idx) - stat_b(idx), groups, n_boot=n_boot, seed=seed, level=level
    )


def accuracy_score(logits: torch.Tensor, labels: torch.Tensor, groups: Sequence, **kw) -> Score:
    return bootstrap(lambda idx: accuracy(logits[idx], labels[idx]), groups, **kw)


def auroc_score(scores: torch.Tensor, labels: torch.Tensor, groups: Sequence, **kw) -> Score:
    return bootstrap(lambda idx: auroc(scores[idx], labels[idx]), groups, **kw)


__all__ = [
    "Score",
    "accuracy",
    "accuracy_score",
    "auroc",
    "auroc_score",
    "bootstrap",
    "paired_difference",
]

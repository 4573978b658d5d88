"""The honest three-way split of a feature's stored examples: shown / valid / test.

The atlas keeps, per feature, top activating windows, quantile samples (one reservoir per activation
octave) and non-activating windows, each a `window`-token slice of one corpus context. Three parts:

- `shown`: activating windows the explainer may read (nothing else is ever shown to it);
- `valid`: held-out activating + non-activating windows for CHOICES made by looking at scores (e.g.
  whether a concept word earns its place in a label); never reported;
- `test`: held-out activating + non-activating windows for the REPORTED scores, scored once.

The unit of leakage is text, not a window (docs/measuring.md): two top-K windows of a dense feature
often overlap (neighbouring peaks), and dealing windows alternately put 98% of the held-out window
tokens of a synthetic dense feature inside a shown window. So windows are first grouped: windows of
the same corpus context (when the build's `ctx_len` is known) and windows whose token spans overlap
(always; spans come from `token_index - position`) form one group, and whole groups are dealt to one
part. Groups are dealt in order of their best activation, each to the part furthest below its target
share (`SplitConfig`), so every part spans the activation range (Paulo et al. 2024: quantile
sampling generalizes better than top-only). Non-activating windows are never shown: those in a
group with a shown window are dropped, the rest are dealt between valid and test the same way.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress

from ..atlas.db import Example, FeatureProfile


@dataclass(frozen=True)
class SplitConfig:
    shown: float = 0.4
    """target share of activating windows the explainer sees"""
    valid: float = 0.2
    """target share of activating windows kept for choices (label refinement); never reported"""
    test: float = 0.4
    """target share of activating windows for the reported scores"""
    ctx_len: int | None = None
    """tokens per corpus context of the atlas build; windows of one context go to one part (None:
    group by overlapping token spans only)"""

    def __post_init__(self) -> None:
        if min(self.shown, self.valid, self.test) < 0 or self.shown <= 0 or self.test <= 0:
            raise ValueError("split shares must be >= 0 and shown, test > 0")


@dataclass
class Held:
    """Held-out windows of one part (valid or test): what a scorer judges a label on."""

    pos: list[Example] = field(default_factory=list)
    """activating windows"""
    neg: list[Example] = field(default_factory=list)
    """non-activating windows"""


@dataclass
class Split:
    shown: list[Example]
    """activating windows the explainer may read"""
    valid: Held
    """held out, for choices (e.g. does a concept word earn its place); never reported"""
    test: Held
    """held out, for the reported scores"""


def span(e: Example) -> tuple[int, int] | None:
    """Global token ids [start, end) the window covers (None for windows without an id)."""
    if e.token_index is None:
        return None
    start = e.token_index - e.position
    return start, start + len(e.tokens)


def _groups(windows: list[Example], ctx_len: int | None) -> list[list[int]]:
    """Indices of `windows` grouped by shared context or overlapping span (1-D interval merge)."""
    keyed = sorted((s, i) for i, e in enumerate(windows) if (s := span(e)) is not None)
    groups: list[list[int]] = []
    end, ctx = -1, None
    for (a, b), i in keyed:
        c = a // ctx_len if ctx_len else None
        if groups and (a < end or (c is not None and c == ctx)):
            groups[-1].append(i)
            end = max(end, b)
        else:
            groups.append([i])
            end = b
        ctx = c
    groups += [[i] for i, e in enumerate(windows) if span(e) is None]
    return groups


def _deal(sizes: list[int], shares: list[float]) -> list[int]:
    """Part of each item (in order): the part furthest below its target share of the items dealt
    so far (including this one); ties go to the earlier part."""
    got = [0] * len(shares)
    total, out = 0, []
    for n in sizes:
        total += n
        j = max(range(len(shares)), key=lambda k: (shares[k] * total - got[k], -k))
        got[j] += n
        out.append(j)
    return out


def _has_pos(group: list[int], n_pos: int) -> bool:
    return any(i < n_pos for i in group)


def split_examples(p: FeatureProfile, cfg: SplitConfig = SplitConfig()) -> Split:
    seen: set = set()
    pos: list[Example] = []
    for e in list(p.top) + list(p.quantiles):
        key = e.token_index if e.token_index is not None else (tuple(e.tokens), e.position)
        if key in seen or e.score <= 0:
            continue
        seen.add(key)
        pos.append(e)
    neg = list(p.negatives)
    windows = pos + neg
    groups = _groups(windows, cfg.ctx_len)
    # A group's rank is its best peak activation (negative-only groups rank last, dealt separately).
    best = [max((windows[i].score for i in g if i < len(pos)), default=0.0) for g in groups]
    act_groups = [
        g for g, b in sorted(zip(groups, best), key=lambda gb: -gb[1]) if _has_pos(g, len(pos))
    ]
    parts = _deal(
        [sum(i < len(pos) for i in g) for g in act_groups], [cfg.shown, cfg.valid, cfg.test]
    )
    out = Split(shown=[], valid=Held(), test=Held())
    for g, j in zip(act_groups, parts):
        for i in sorted(g):
            e = windows[i]
            if j == 0:
                if i < len(pos):
                    out.shown.append(e)  # negatives sharing text with a shown window are dropped
            else:
                h = out.valid if j == 1 else out.test
                (h.pos if i < len(pos) else h.neg).append(e)
    neg_groups = [g for g in groups if not _has_pos(g, len(pos))]
    for g, j in zip(neg_groups, _deal([len(g) for g in neg_groups], [cfg.valid, cfg.test])):
        (out.valid if j == 0 else out.test).neg.extend(windows[i] for i in sorted(g))
    # Keep the pools' order inside each part: top windows first, then quantiles high to low.
    order = {id(e): k for k, e in enumerate(windows)}
    for lst in (out.shown, out.valid.pos, out.valid.neg, out.test.pos, out.test.neg):
        lst.sort(key=lambda e: order[id(e)])
    return out


def overlap_tokens(split: Split) -> tuple[int, int]:
    """(held-out window tokens inside some shown window's span, all held-out window tokens)."""
    shown = set()
    for e in split.shown:
        if (s := span(e)) is not None:
            shown.update(range(*s))
    hit = total = 0
    for h in (split.valid, split.test):
        for e in h.pos + h.neg:
            total += len(e.tokens)
            if (s := span(e)) is not None:
                hit += sum(t in shown for t in range(*s))
    return hit, total


@functools.lru_cache(maxsize=1 << 18)
def token_key(tok: str) -> str:
    """Compare tokens by their visible word: strip BPE space markers and case. Memoized: the
    labeller
    and scorers call it ~9M times on the default atlas, over a vocabulary of a few thousand
    tokens."""
    return tok.replace("Ġ", " ").replace("▁", " ").strip().lower()


fires = functools.partial(operator.lt, 0)
"""fires(a) == (a > 0), as a C call (map(fires, acts) instead of a Python-level comprehension)"""


def count_trials(windows, pos: Counter, neg: Counter) -> None:
    """Add every token of `windows` (by token_key) to `pos` where the feature fires on it (> 0) and
    to `neg` where it does not; a window without activations counts whole into `neg`. The counters
    see the keys in window and token order (what a per-token loop adds), with the loops in C."""
    for e in windows:
        if not e.acts:
            neg.update(map(token_key, e.tokens))
            continue
        keys = list(map(token_key, e.tokens[: len(e.acts)]))
        f = list(map(fires, e.acts))
        pos.update(compress(keys, f))
        neg.update(compress(keys, map(operator.not_, f)))


def window_text(e: Example) -> str:
    """A window as plain text (special tokens dropped) for embedding or judging."""
    out = []
    for t in e.tokens:
        if t.startswith("<") and t.endswith(">") and len(t) < 16 and " " not in t:
            continue  # <bos>, <eos>, <|im_end|>, ...
        out.append(t)
    joined = "".join(out)
    return joined if " " in joined else " ".join(out)  # word-level tokenizers carry no spaces

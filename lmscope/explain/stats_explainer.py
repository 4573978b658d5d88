"""The stats explainer: a label from counts alone (no LLM), input side + output side.

Input side: which tokens the feature fires on. Over the explainer's windows (split.py) every token
is a trial: it fires (activation > 0) or not. A token's precision is fires / occurrences and its
recall is its share of all firings; tokens are taken greedily by firings x precision until they
cover 80% of the firings (at most 3, precision >= 0.2). If most firings follow the same token, the
context is named too ("after 'the'"). Output side: the top promoted tokens of the decoder direction
through the unembedding ("says ' horse'"), the vocabulary projection of Bills et al. 2023 / the
output-centric descriptions of Gur-Arieh et al. 2025 (input + output together score best).

The label reads `horse, pony | after "the" | says "gallop"`; precision and recall of the token set
on the explainer's windows go into the details (the held-out numbers come from scorers/direct.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..atlas.db import FeatureProfile
from .split import Split, token_key

METHOD = "stats"
VERSION = "1"
MAX_TOKENS = 3
COVER = 0.8
MIN_PRECISION = 0.2


@dataclass
class StatsExplanation:
    label: str
    tokens: list[str] = field(default_factory=list)
    """normalized input tokens named by the label"""
    context: str | None = None
    says: list[str] = field(default_factory=list)
    precision: float = 0.0
    recall: float = 0.0

    def details(self) -> dict:
        return {"tokens": self.tokens, "context": self.context, "says": self.says,
                "shown_precision": round(self.precision, 4), "shown_recall": round(self.recall, 4)}


def explain_stats(p: FeatureProfile, split: Split, n_says: int = 3) -> StatsExplanation:
    fires: Counter = Counter()
    seen: Counter = Counter()
    before: Counter = Counter()
    n_fire = 0
    for e in split.shown:
        keys = [token_key(t) for t in e.tokens]
        for i, (k, a) in enumerate(zip(keys, e.acts)):
            seen[k] += 1
            if a > 0:
                fires[k] += 1
                n_fire += 1
                if i > 0:
                    before[keys[i - 1]] += 1
    chosen: list[str] = []
    covered = 0
    # Greedy: the most firings weighted by precision first.
    for k, _ in sorted(fires.items(), key=lambda kv: -kv[1] * kv[1] / seen[kv[0]]):
        if len(chosen) >= MAX_TOKENS or covered >= COVER * n_fire:
            break
        if not k or fires[k] / seen[k] < MIN_PRECISION:
            continue
        chosen.append(k)
        covered += fires[k]
    tp = sum(fires[k] for k in chosen)
    occ = sum(seen[k] for k in chosen)
    context = None
    if before and n_fire >= 4:
        k, c = before.most_common(1)[0]
        if c >= 0.6 * n_fire and k not in chosen and k:
            context = k
    says = [token_key(x.token) for x in p.promoted[:n_says] if token_key(x.token)]
    parts = []
    if chosen:
        parts.append(", ".join(chosen))
    if context:
        parts.append(f'after "{context}"')
    if says:
        parts.append("says " + ", ".join(f'"{s}"' for s in says))
    label = " | ".join(parts) if parts else "(no pattern)"
    return StatsExplanation(label, chosen, context, says, tp / occ if occ else 0.0, tp / n_fire if n_fire else 0.0)


def label_tokens(text: str) -> set[str]:
    """The input-side token set a label names, for the direct scorer: the part before '| says' (or
    the whole text), split on commas and whitespace, quotes and a few function words dropped."""
    head = text.split("| says")[0].split("says ")[0] if "says" in text else text
    head = head.split("| after")[0]
    words = set()
    for w in head.replace(",", " ").replace("|", " ").split():
        w = token_key(w.strip("\"'`.;:()[]{}<>"))
        if w and w not in _STOP:
            words.add(w)
    return words


_STOP = {"the", "a", "an", "of", "on", "in", "word", "words", "token", "tokens", "about", "and", "or",
         "fires", "feature", "this", "mentions", "related", "to", "for", "with", "is", "text"}

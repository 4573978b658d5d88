"""The stats explainer: a label from counts alone (no LLM), input side + output side.

Input side: which tokens the feature fires on. Over the SHOWN windows (split.py) every token is a
trial: it fires (activation > 0) or not. Three rules propose a list of at most 3 tokens: `precision`
(greedy by firings x precision until 80% of firings are covered, precision >= 0.2), `balanced`
(greedy by gain in balanced accuracy on the shown tokens) and `peak` (the 3 tokens with the highest
activations, the equal-budget baseline's rule); the label takes the list that predicts firing best
on the VALIDATION windows (ties: that order). The token list is the label's structured detail
(`details["tokens"]`, what the direct scorer scores; never rewritten by what follows).

Reading aids (concepts.py), each proposed on the shown windows and KEPT only if it raises the
token-level balanced accuracy on the VALIDATION windows over the token list alone (never the test
windows): the concept behind the tokens (`relative (mother, wife, husband)`, `a number (3, 6)`,
`pronoun (he, she, they)`: up to three candidates, from the listed tokens, from WordNet over every
shown firing word, and from a curated list of concept words ranked by the embedder) and the context
it fires in (`after "the"`, `at the start of a line`, `inside quotes`, `inside a word`).

Output side: the top promoted tokens of the decoder direction through the unembedding ("says
"gallop""), the vocabulary projection of Bills et al. 2023 / the output-centric descriptions of
Gur-Arieh et al. 2025, printed only when they cohere (coherence.py: mutual similarity above the 95th
percentile of random sets from the atlas's output vocabulary); otherwise "output: no clear pattern".

The label reads `equine (horse, pony) | after "the" | says "gallop", "ran"`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import compress

from ..atlas.db import FeatureProfile
from . import concepts
from .split import Split, token_key
from .split import fires as fired

METHOD = "stats"
VERSION = "4"
"""4: WordNet category heads (activity, content, instrumentality, ...) no longer name a concept"""
MAX_TOKENS = 3
COVER = 0.8
MIN_PRECISION = 0.2
N_SAYS = 3
NO_OUTPUT = "output: no clear pattern"


@dataclass
class StatsExplanation:
    label: str
    tokens: list[str] = field(default_factory=list)
    """normalized input tokens named by the label (the structured list the direct scorer reads)"""
    context: str | None = None
    says: list[str] = field(default_factory=list)
    """promoted tokens printed in the label ([] when the output side does not cohere)"""
    precision: float = 0.0
    recall: float = 0.0
    concept: concepts.Concept | None = None
    feature_class: str = ""
    choice: dict = field(default_factory=dict)
    """validation balanced accuracy of each variant tried (concepts.choose)"""
    proposed: dict = field(default_factory=dict)
    """what the shown windows suggested before validation (concept, context)"""
    output: dict | None = None
    """coherence of the promoted tokens (coherence.CoherenceResult.as_dict) or None"""

    def details(self) -> dict:
        return {
            "tokens": self.tokens,
            "context": self.context,
            "says": self.says,
            "concept": self.concept.as_dict() if self.concept else None,
            "class": self.feature_class,
            "valid_choice": self.choice,
            "proposed": self.proposed,
            "output": self.output,
            "shown_precision": round(self.precision, 4),
            "shown_recall": round(self.recall, 4),
        }


class Labeller:
    """Shared resources of one labelling run: WordNet (cached lookups) and the output-coherence
    null.

    `pool`: the atlas's output vocabulary for the coherence null (`for_atlas` reads it); None = the
    output side is judged against MiniLM's own whole-word vocabulary (a stand-in when no atlas is at
    hand, e.g. a single profile in a script)."""

    def __init__(
        self,
        pool: list[str] | None = None,
        wordnet=True,
        coherence=True,
        embed_concepts: bool | None = None,
    ) -> None:
        self.wn = concepts.default_wordnet() if wordnet else None
        self._pool = pool
        self._coh = None
        self._want_coh = coherence
        self._cur = None
        self._want_embed = coherence if embed_concepts is None else embed_concepts
        self.marks = True
        """the tokenizer marks word starts (GPT-2 'Ġ', SentencePiece '▁'): pieces without one are
        word fragments ("rowsiness", "ilantro"), which no reader can use as an output word"""

    @classmethod
    def for_atlas(cls, db) -> Labeller:
        raw = [t for (t,) in db._q("SELECT DISTINCT token FROM logit_effects") if t]
        lab = cls(pool=[token_key(t) for t in raw if readable(t, True)])
        lab.marks = any(t.startswith(_MARKS) for t in raw)
        return lab

    def is_word(self, k: str) -> bool:
        """A word a reader knows: in WordNet, or one whole piece of MiniLM's English vocabulary, or
        a
        number / punctuation. Word-start BPE pieces of longer words ("accred", "incarc") are not."""
        if not k[0].isalpha():
            return True
        if len(k) < 2 or k in concepts._FUNCTION:
            # "and", "under", "s" cluster in any embedding space and tell a reader nothing
            return False
        if self.wn is not None and (k in self.wn.index("n") or k in self.wn.index("v")):
            return True
        coh = self.coherence()
        return coh is not None and k in coh.embed.vocab

    def curated(self) -> concepts.Curated:
        """The curated concept words, resolved in WordNet and embedded once for this run."""
        if self._cur is None:
            emb = None
            if self._want_embed:
                coh = self.coherence()
                if coh is not None:
                    emb = coh.embed
                else:
                    from .coherence import StaticEmbedder

                    emb = StaticEmbedder()
            self._cur = concepts.Curated(self.wn, emb)
        return self._cur

    def coherence(self):
        if self._coh is None and self._want_coh:
            from .coherence import Coherence, StaticEmbedder

            emb = StaticEmbedder()
            pool = self._pool
            if pool is None:
                pool = sorted(emb.vocab)
            # the null draws from the same kind of tokens the test admits: words a reader knows
            wn_n = self.wn.index("n") if self.wn else {}
            wn_v = self.wn.index("v") if self.wn else {}
            pool = [
                w
                for w in pool
                if w and (not w[0].isalpha() or w in emb.vocab or w in wn_n or w in wn_v)
            ]
            self._coh = Coherence(pool, emb)
        return self._coh


_MARKS = ("Ġ", "▁", " ")


def readable(tok: str, marks: bool) -> bool:
    """A whole word (starts a word) or a number / punctuation; not the middle of a word."""
    return bool(tok) and (not marks or tok.startswith(_MARKS) or not tok[0].isalpha())


_DEFAULT: Labeller | None = None


def default_labeller() -> Labeller:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Labeller()
    return _DEFAULT


def _counts(split: Split) -> tuple[Counter, Counter, int, int]:
    """(firings per token, occurrences per token, firings, tokens) over the shown windows."""
    fires: Counter = Counter()
    seen: Counter = Counter()
    for e in split.shown:
        keys = list(map(token_key, e.tokens[: len(e.acts)]))  # the zip's length, as before
        seen.update(keys)
        fires.update(compress(keys, map(fired, e.acts)))
    n_fire, n_tok = sum(fires.values()), sum(seen.values())
    return fires, seen, n_fire, n_tok


def _greedy_precision(fires: Counter, seen: Counter, n_fire: int) -> list[str]:
    """The most firings weighted by precision first, until 80% of firings are covered."""
    chosen: list[str] = []
    covered = 0
    for k, _ in sorted(fires.items(), key=lambda kv: (-kv[1] * kv[1] / seen[kv[0]], kv[0])):
        if len(chosen) >= MAX_TOKENS or covered >= COVER * n_fire:
            break
        if not k or fires[k] / seen[k] < MIN_PRECISION:
            continue
        chosen.append(k)
        covered += fires[k]
    return chosen


def _greedy_balanced(fires: Counter, seen: Counter, n_fire: int, n_tok: int) -> list[str]:
    """Add the token that most raises balanced accuracy on the shown tokens (recall gain minus
    false-positive-rate cost), while it raises it."""
    n_neg = n_tok - n_fire
    if not n_fire or not n_neg:
        return []
    gains = sorted(
        ((fires[k] / n_fire - (seen[k] - fires[k]) / n_neg, k) for k in fires if k),
        key=lambda g: (-g[0], g[1]),
    )
    return [k for g, k in gains[:MAX_TOKENS] if g > 0]


def token_candidates(split: Split, counts: tuple | None = None) -> dict[str, list[str]]:
    """Token lists from three rules on the shown windows; the label takes the one that predicts
    firing best on the validation windows (explain_stats). `counts`: _counts(split), if at hand."""
    from .baselines import top_tokens

    fires, seen, n_fire, n_tok = counts or _counts(split)
    return {
        "precision": _greedy_precision(fires, seen, n_fire),
        "balanced": _greedy_balanced(fires, seen, n_fire, n_tok),
        "peak": top_tokens(split, MAX_TOKENS),
    }


def _shown_fit(counts: tuple, chosen: list[str]) -> tuple[float, float]:
    fires, seen, n_fire, _ = counts
    tp = sum(fires[k] for k in chosen)
    occ = sum(seen[k] for k in chosen)
    return tp / occ if occ else 0.0, tp / n_fire if n_fire else 0.0


def _show(t: str) -> str:
    return t if t.replace("'", "").replace("-", "").isalnum() else f'"{t}"'


def compose(
    tokens: list[str], concept, context: str | None, says: list[str], output_known: bool
) -> str:
    parts = []
    if tokens:
        lst = ", ".join(_show(t) for t in tokens)
        parts.append(f"{concept.name} ({lst})" if concept else lst)
    elif concept:
        parts.append(concept.name)
    if context:
        parts.append(context)
    if says:
        parts.append("says " + ", ".join(f'"{s}"' for s in says))
    elif output_known:
        parts.append(NO_OUTPUT)
    return " | ".join(parts) if parts else "(no pattern)"


def explain_stats(
    p: FeatureProfile, split: Split, labeller: Labeller | None = None
) -> StatsExplanation:
    lab = labeller or default_labeller()
    valid = split.valid.pos + split.valid.neg
    trials = concepts.Trials(valid)
    counts = _counts(split)
    cands = token_candidates(split, counts)
    rule_scores = {r: trials.score(set(t)) for r, t in cands.items()}
    # ties and no validation windows: the first rule (precision-weighted, the most specific list)
    rule = max(
        cands,
        key=lambda r: (
            rule_scores[r] if rule_scores[r] is not None else -1.0,
            -list(cands).index(r),
        ),
    )
    chosen = cands[rule]
    precision, recall = _shown_fit(counts, chosen)
    proposed = concepts.propose_concepts(counts[0], counts[1], chosen, lab.wn, lab.curated())
    context = concepts.propose_context(split.shown, chosen)
    ch = concepts.choose(valid, chosen, proposed, context, lab.wn, trials)
    promoted = list(
        dict.fromkeys(
            k
            for k in (
                token_key(x.token)
                for x in p.promoted[: concepts_n()]
                if readable(x.token, lab.marks)
            )
            if k and lab.is_word(k)
        )
    )
    coh = lab.coherence()
    res = coh(promoted) if coh is not None and promoted else None
    says = (
        promoted[:N_SAYS]
        if (res is None and coh is None) or (res is not None and res.coherent)
        else []
    )
    label = compose(chosen, ch.concept, ch.context, says, output_known=bool(p.promoted))
    return StatsExplanation(
        label,
        chosen,
        ch.context,
        says,
        precision,
        recall,
        ch.concept,
        concepts.feature_class(chosen, context, recall),
        {
            **ch.valid,
            "token_rule": rule,
            "token_rules": {r: None if v is None else round(v, 4) for r, v in rule_scores.items()},
        },
        {
            "concept": proposed[0].name if proposed else None,
            "concepts": [c.name for c in proposed],
            "context": context,
        },
        res.as_dict() if res is not None else None,
    )


def concepts_n() -> int:
    from .coherence import N_TOKENS

    return N_TOKENS

"""Name the concept behind a feature's token list, and the context it fires in (no LLM).

A stats label is a predicate over tokens in context: "the token is one of T, or a word under the
concept C, and the context P holds". Each part is proposed from the SHOWN windows and has to earn its
place on the VALIDATION windows (split.py): C (or P) stays only if the predicate with it has a higher
token-level balanced accuracy on validation than without it (the direct scorer's trial unit), so a
concept word is never printed unless it predicts firing better than the token list alone. The test
windows are never read here.

Concepts, in the order they are tried:
- token kind: every token a number -> "a number"; every token punctuation -> "punctuation";
- a multi-word WordNet lemma containing two or more of the tokens (old, good, days -> "good old days");
- the lowest common hypernym of the tokens' first three senses in WordNet (nouns, then verbs), as
  specific as possible (greatest depth), covering every token (or all but one of three or more),
  never a near-root class ("entity", "object", "whole", "abstraction", ...): mother, wife, husband ->
  "relative"; sun, moon -> "celestial body";
- for a single word, its most frequent sense's hypernym (horse -> "equine"), kept only if held-out
  firings on other words under it make it earn its place.
Contexts (proposed when they hold for >= 60% of the shown firings and at least 1.5x as often as on
all shown tokens): after one token (`after "the"`), at the start of a line, inside quotes, after a
number, capitalized.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .split import token_key
from .wordnet import WordNet, wordnet

MIN_DEPTH = {"n": 4, "v": 1}
"""concepts closer to WordNet's roots than this say nothing (noun roots: entity = 0)"""
VAGUE = {"entity", "physical entity", "object", "whole", "abstraction", "attribute", "relation", "group",
         "act", "event", "psychological feature", "matter", "thing", "artifact", "causal agent", "measure",
         "communication", "state", "unit", "part", "living thing", "organism",
         "be", "have", "make", "do", "get", "cause", "move"}
CONTEXT_COVER = 0.6
CONTEXT_LIFT = 1.5
_NEWLINE = ("\n", "Ċ", "<0x0A>")
_QUOTES = ('"', "\u201c", "\u201d")


def visible(tok: str) -> str:
    """The token's text without BPE space / newline / tab markers (case kept; "Ċ" is not a capital)."""
    return tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").replace("ĉ", "\t").strip()


def is_number(k: str) -> bool:
    return bool(k) and k.replace(",", "").replace(".", "").isdigit()


def is_punct(k: str) -> bool:
    return bool(k) and not any(c.isalnum() for c in k)


@dataclass(frozen=True)
class Concept:
    name: str
    """what the label prints ("relative", "a number")"""
    kind: str
    """number | punctuation | compound | hypernym"""
    pos: str = ""
    offset: int = 0
    """WordNet synset (pos n|v, byte offset) for compound/hypernym concepts"""

    def member(self, key: str, wn: WordNet | None) -> bool:
        """Is the token (normalized by token_key) an instance of the concept?"""
        if self.kind == "number":
            return is_number(key)
        if self.kind == "punctuation":
            return is_punct(key)
        if wn is None or not key.isalpha():
            return False
        if self.kind == "compound":
            return key in {w for w in self.name.split()}
        return any(self.offset in wn.ancestors(self.pos, o) for o in wn.senses(key, self.pos))

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "pos": self.pos, "offset": self.offset}


def propose_concept(tokens: list[str], wn: WordNet | None) -> Concept | None:
    key = (tuple(tokens), id(wn))
    if key not in _CONCEPT_CACHE:
        if len(_CONCEPT_CACHE) > 100_000:
            _CONCEPT_CACHE.clear()
        _CONCEPT_CACHE[key] = _propose_concept(tokens, wn)
    return _CONCEPT_CACHE[key]


_CONCEPT_CACHE: dict = {}
_FUNCTION = {"of", "the", "and", "a", "an", "in", "to", "on", "at", "for", "by", "with", "or", "as", "is",
             "are", "was", "were", "be", "been", "has", "had", "have", "not", "but", "from", "this", "that",
             "his", "her", "its", "our", "their", "who", "which", "what", "when", "then", "than", "can",
             "will", "would", "all", "any", "one", "out", "off", "too", "very", "just", "also", "you"}


def _propose_concept(tokens: list[str], wn: WordNet | None) -> Concept | None:
    if not tokens:
        return None
    if all(is_number(t) for t in tokens):
        return Concept("a number", "number")
    if all(is_punct(t) for t in tokens):
        return Concept("punctuation", "punctuation")
    if wn is None:
        return None
    # WordNet knows "at" (astatine) and "re" (rhenium): short and function words name no concept
    words = [t for t in tokens if t.isalpha() and len(t) >= 3 and t not in _FUNCTION]
    if len(words) >= 2:
        c = _compound(words, wn) or _common_hypernym(words, wn)
        if c:
            return c
    if len(words) == 1 and len(tokens) == 1:
        for o in wn.senses(words[0], "n")[:1]:
            for h in wn.synset("n", o)[1]:
                name = wn.name("n", h)
                if wn.depth("n", h) >= MIN_DEPTH["n"] + 1 and name not in VAGUE:
                    return Concept(name, "hypernym", "n", h)
    return None


def _compound(words: list[str], wn: WordNet) -> Concept | None:
    """A multi-word lemma every content word of which is one of the tokens (good_old_days), never a
    lemma that merely shares two words with them (Sun_Myung_Moon for sun, moon)."""
    bases = set(words) | {b for w in words for b in wn.base_forms(w, "n")}
    best = None
    for w in words:
        if w in _FUNCTION:
            continue  # "the" is part of thousands of lemmas and names none of them
        for lemma, off in wn.compounds(w):
            parts = [x for x in lemma.split("_") if x not in _FUNCTION]
            if len(parts) >= 2 and all(x in bases for x in parts):
                if best is None or len(parts) > len(best[0].split("_")):
                    best = (lemma, off)
    return Concept(best[0].replace("_", " "), "compound", "n", best[1]) if best else None


def _common_hypernym(words: list[str], wn: WordNet) -> Concept | None:
    for pos in ("n", "v"):
        anc = [set().union(*(wn.ancestors(pos, o) for o in wn.senses(w, pos))) if wn.senses(w, pos) else set()
               for w in words]
        need = len(words) if len(words) < 3 else len(words) - 1
        count: Counter = Counter(o for a in anc for o in a)
        cands = [(c, wn.depth(pos, o), o) for o, c in count.items() if c >= need]
        cands = [(c, d, o) for c, d, o in cands if d >= MIN_DEPTH[pos] and wn.name(pos, o) not in VAGUE]
        if cands:
            c, d, o = max(cands, key=lambda x: (x[0], x[1]))
            return Concept(wn.name(pos, o), "hypernym", pos, o)
    return None


# ---- contexts: predicates over (window tokens, position) --------------------------------------

def _prev(toks: list[str], i: int) -> str:
    return toks[i - 1] if i > 0 else ""


CONTEXTS: dict[str, Callable[[list[str], int], bool]] = {
    "at the start of a line": lambda t, i: i > 0 and any(n in t[i - 1] for n in _NEWLINE),
    "inside quotes": lambda t, i: sum(t[j].count(q) for j in range(i) for q in _QUOTES) % 2 == 1,
    "after a number": lambda t, i: is_number(token_key(_prev(t, i))),
    "capitalized": lambda t, i: visible(t[i])[:1].isupper(),
}
"""the reference definitions, one token at a time (window_flags computes all of them in one pass)"""
NAMES = tuple(CONTEXTS)


def window_flags(toks: list[str]) -> list[tuple[bool, bool, bool, bool]]:
    """Per token, whether each context of NAMES holds: one pass over the window (quote parity is
    a running count, not a rescan of the prefix)."""
    out = []
    quotes = 0
    prev_nl = prev_num = False
    for t in toks:
        out.append((prev_nl, quotes % 2 == 1, prev_num, visible(t)[:1].isupper()))
        quotes += sum(t.count(q) for q in _QUOTES)
        prev_nl = any(n in t for n in _NEWLINE)
        prev_num = is_number(token_key(t))
    return out


def context_fn(name: str) -> Callable[[list[str], int], bool]:
    if name.startswith('after "') and name.endswith('"'):
        k = name[len('after "'):-1]
        return lambda t, i: i > 0 and token_key(t[i - 1]) == k
    return CONTEXTS[name]


def context_mask(name: str, toks: list[str]) -> list[bool]:
    """Whether the context holds at each position of the window."""
    if name in CONTEXTS:
        j = NAMES.index(name)
        return [f[j] for f in window_flags(toks)]
    f = context_fn(name)
    return [f(toks, i) for i in range(len(toks))]


def propose_context(shown, chosen: list[str]) -> str | None:
    """The context holding for most shown firings, far more often than for shown tokens at large."""
    fire: Counter = Counter()
    allc: Counter = Counter()
    before: Counter = Counter()
    n_fire = n_all = 0
    for e in shown:
        flags = window_flags(e.tokens)
        for i, a in enumerate(e.acts):
            hits = [n for n, h in zip(NAMES, flags[i]) if h]
            n_all += 1
            allc.update(hits)
            if a > 0:
                n_fire += 1
                fire.update(hits)
                if i > 0 and not any(n in e.tokens[i - 1] for n in _NEWLINE):  # that is a line start
                    before[token_key(e.tokens[i - 1])] += 1
    if n_fire < 4:
        return None
    best, lift_best = None, 0.0
    for n, c in fire.items():
        lift = (c / n_fire) / (allc[n] / n_all)
        if c >= CONTEXT_COVER * n_fire and lift >= CONTEXT_LIFT and lift > lift_best:
            best, lift_best = n, lift
    if before:
        k, c = before.most_common(1)[0]
        if k and k not in chosen and c >= CONTEXT_COVER * n_fire:
            return f'after "{k}"'
    return best


# ---- the label as a predicate, and the choice on validation -----------------------------------

def predict(held_windows, tokens: set[str], concept: Concept | None, context: str | None,
            wn: WordNet | None) -> tuple[list[bool], list[bool]]:
    """(prediction, truth) per token of the windows: named token or concept member, within context."""
    pred, truth = [], []
    memo: dict[str, bool] = {}
    for e in held_windows:
        acts = e.acts if e.acts else [0.0] * len(e.tokens)
        mask = context_mask(context, e.tokens) if context else None
        for i, (t, a) in enumerate(zip(e.tokens, acts)):
            k = token_key(t)
            if tokens or concept:
                hit = k in tokens
                if not hit and concept is not None:
                    if k not in memo:
                        memo[k] = concept.member(k, wn)
                    hit = memo[k]
            else:
                hit = True
            if hit and mask is not None:
                hit = mask[i]
            pred.append(hit)
            truth.append(a > 0)
    return pred, truth


def bal_acc(pred: list[bool], truth: list[bool]) -> float | None:
    """Balanced accuracy (the direct scorer's metric); None when a class is missing."""
    n_pos = sum(truth)
    n_neg = len(truth) - n_pos
    if not n_pos or not n_neg:
        return None
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    return (tp / n_pos + (n_neg - fp) / n_neg) / 2


@dataclass
class Choice:
    concept: Concept | None
    context: str | None
    valid: dict
    """balanced accuracy on validation of each variant tried, and what was kept"""


def choose(valid_windows, tokens: list[str], concept: Concept | None, context: str | None,
           wn: WordNet | None) -> Choice:
    """Keep the concept, then the context, only where each raises validation balanced accuracy."""
    T = set(tokens)

    def score(c, x):
        return bal_acc(*predict(valid_windows, T, c, x, wn))

    base = score(None, None)
    log = {"tokens": base}
    if base is None or (concept is None and context is None):
        return Choice(None, None, {**log, "score": None if base is None else round(base, 4),
                                   "kept": "tokens" if base is not None else "no validation windows"})
    keep_c = None
    best = base
    if concept is not None:
        s = score(concept, None)
        log["concept"] = s
        if s is not None and s > best:
            keep_c, best = concept, s
    keep_x = None
    if context is not None:
        s = score(keep_c, context)
        log["context"] = s
        if s is not None and s > best:
            keep_x, best = context, s
    log["score"] = best
    log = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in log.items()}
    log["kept"] = "+".join(["tokens"] + (["concept"] if keep_c else []) + (["context"] if keep_x else []))
    return Choice(keep_c, keep_x, log)


def feature_class(tokens: list[str], context: str | None, cover: float) -> str:
    """single token | token family | context pattern | position/format, from the shown windows."""
    if tokens and all(not t.isalpha() for t in tokens) or (not tokens and context in CONTEXTS):
        return "position/format"
    if context is not None or not tokens or cover < 0.5:
        return "context pattern"
    return "single token" if len(tokens) == 1 else "token family"


def default_wordnet() -> WordNet | None:
    return wordnet()

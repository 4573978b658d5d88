"""Name the concept behind a feature's token list, and the context it fires in (no LLM).

A stats label is a predicate over tokens in context: "the token is one of T, or a word under the
concept C, and the context P holds". Each part is proposed from the SHOWN windows and has to earn
its
place on the VALIDATION windows (split.py): C (or P) stays only if the predicate with it has a
higher
token-level balanced accuracy on validation than without it (the direct scorer's trial unit), so a
concept word is never printed unless it predicts firing better than the token list alone. The test
windows are never read here.

Concepts, in the order they are tried:
- token kind: every token a number -> "a number"; every token punctuation -> "punctuation";
- a multi-word WordNet lemma containing two or more of the tokens (old, good, days -> "good old
days");
- the lowest common hypernym of the tokens' first three senses in WordNet (nouns, then verbs), as
  specific as possible (greatest depth), covering every token (or all but one of three or more),
  never a near-root class ("entity", "object", "whole", "abstraction", ...): mother, wife, husband
  ->
  "relative"; sun, moon -> "celestial body";
- for a single word, its most frequent sense's hypernym (horse -> "equine"), kept only if held-out
  firings on other words under it make it earn its place;
- from ALL the words the feature fires on in the shown windows (not only the <= 3 listed), the
  WordNet class that best predicts firing there (balanced accuracy of tokens + class members over
  the shown tokens), among classes that hold at least one more firing word than the list and are
  specific enough: intrinsic information content >= MIN_IC (Seco et al. 2004; "person" 0.18,
  "relative" 0.54, "entity" 0) and never a near-root class;
- a curated concept word (concept_list.py: "family member", "pronoun", "preposition", "sky /
  celestial body", "verb of saying", ...; members by WordNet anchors or explicit closed-class
  words), among those that hold a firing word beyond the list and raise balanced accuracy on the
  shown tokens, the one nearest the firing words in the embedder's static word-piece space (the
  concept words are embedded once per run; a feature costs one weighted mean and a matrix-vector
  product, no embedder call).
At most these three candidates go to validation; the best one that beats the token list alone stays.
Contexts (proposed when they hold for >= 60% of the shown firings and at least 1.5x as often as on
all shown tokens): after one token (`after "the"`), at the start of a line, inside quotes, after a
number, capitalized, inside a word (a word piece continuing the previous token), at the start of a
sentence.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress

import numpy as np

from .concept_list import CURATED
from .split import count_trials, token_key
from .split import fires as fired
from .wordnet import WordNet, wordnet

MIN_DEPTH = {"n": 4, "v": 1}
"""concepts closer to WordNet's roots than this say nothing (noun roots: entity = 0)"""
VAGUE = {
    "entity",
    "physical entity",
    "object",
    "whole",
    "abstraction",
    "attribute",
    "relation",
    "group",
    "act",
    "event",
    "psychological feature",
    "matter",
    "thing",
    "artifact",
    "causal agent",
    "measure",
    "communication",
    "state",
    "unit",
    "part",
    "living thing",
    "organism",
    "be",
    "have",
    "make",
    "do",
    "get",
    "cause",
    "move",
    # WordNet's category heads: each is in noun.Tops (lexicographer file 03, the unique beginners)
    # or is the head, directly under a noun.Tops class, of a whole lexicographer file of > 500
    # synsets (noun.act, noun.cognition, noun.artifact, noun.event). They passed MIN_IC (activity
    # 0.29, content 0.32, instrumentality 0.24, structure 0.35, substance 0.28, natural object
    # 0.37, happening 0.39, process 0.44) but name a part of the dictionary, not a concept; no IC
    # or depth floor separates them from kept classes (clothing 0.44, body part 0.34, animal
    # 0.27; device is depth 6, body part 4). The heads under "person" (relative, worker) stay:
    # people are a concept a reader uses, as MIN_IC's note says.
    "activity",
    "content",
    "instrumentality",
    "structure",
    "substance",
    "natural object",
    "happening",
    "process",
}
MIN_IC = {"n": 0.25, "v": 0.3}
"""intrinsic information content (WordNet.ic) below which a class found over the firing words says
nothing: nouns "person" 0.18, "artifact" 0.18, "organism" 0.13 fail, "animal" 0.27, "body part"
0.34,
"relative" 0.54 pass; verbs (a flatter hierarchy) "change" 0.22 fails, "travel" 0.34 passes.
("person" stays reachable as a curated concept and through the listed tokens' own hypernym.)"""
MAX_CANDIDATES = 3
"""concept candidates scored on validation per feature (few: each is a choice made on validation)"""
CONTEXT_COVER = 0.6
CONTEXT_LIFT = 1.5
_NEWLINE = ("\n", "Ċ", "<0x0A>")
_QUOTES = ('"', "\u201c", "\u201d")


def visible(tok: str) -> str:
    """The token's text without BPE space / newline / tab markers (case kept; "Ċ" is not a
    capital)."""
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
    words: tuple[str, ...] = ()
    """curated concepts: explicit member words (closed classes WordNet does not hold)"""
    anchors: tuple[tuple[str, int], ...] = ()
    """curated concepts: WordNet synsets (pos, offset) whose hyponyms are members"""

    def member(self, key: str, wn: WordNet | None) -> bool:
        """Is the token (normalized by token_key) an instance of the concept?"""
        if self.kind == "number":
            return is_number(key)
        if self.kind == "punctuation":
            return is_punct(key)
        if self.kind == "curated":
            return key in self.words or (wn is not None and not self.anchors_miss(key, wn))
        if wn is None or not key.isalpha():
            return False
        if self.kind == "compound":
            return key in {w for w in self.name.split()}
        return (self.pos, self.offset) in word_ancestors(key, wn)

    def anchors_miss(self, key: str, wn: WordNet) -> bool:
        return not self.anchors or not (set(self.anchors) & word_ancestors(key, wn))

    def as_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "pos": self.pos, "offset": self.offset}
        if self.kind == "curated":
            d["words"], d["anchors"] = list(self.words), [list(a) for a in self.anchors]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Concept:
        return cls(
            d["name"],
            d["kind"],
            d.get("pos", ""),
            d.get("offset", 0),
            tuple(d.get("words", ())),
            tuple((p, o) for p, o in d.get("anchors", ())),
        )


_ANC: dict = {}


def word_ancestors(key: str, wn: WordNet) -> frozenset:
    """(pos, offset) of every WordNet class above the word's three most frequent senses (nouns and
    verbs), the senses themselves included; cached per word for the run. Short and function words
    have none: WordNet reads "at" as astatine, "k" as potassium and "a" as angstrom."""
    got = _ANC.get((key, id(wn)))
    if got is None:
        out: set = set()
        if key.isalpha() and len(key) >= 3 and key not in _FUNCTION:
            for pos in ("n", "v"):
                for o in wn.senses(key, pos):
                    out.update((pos, a) for a in wn.ancestors(pos, o))
        if len(_ANC) > 200_000:
            _ANC.clear()
        got = _ANC[(key, id(wn))] = frozenset(out)
    return got


def propose_concept(tokens: list[str], wn: WordNet | None) -> Concept | None:
    key = (tuple(tokens), id(wn))
    if key not in _CONCEPT_CACHE:
        if len(_CONCEPT_CACHE) > 100_000:
            _CONCEPT_CACHE.clear()
        _CONCEPT_CACHE[key] = _propose_concept(tokens, wn)
    return _CONCEPT_CACHE[key]


_CONCEPT_CACHE: dict = {}
_FUNCTION = {
    "of",
    "the",
    "and",
    "a",
    "an",
    "in",
    "to",
    "on",
    "at",
    "for",
    "by",
    "with",
    "or",
    "as",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "has",
    "had",
    "have",
    "not",
    "but",
    "from",
    "this",
    "that",
    "his",
    "her",
    "its",
    "our",
    "their",
    "who",
    "which",
    "what",
    "when",
    "then",
    "than",
    "can",
    "will",
    "would",
    "all",
    "any",
    "one",
    "out",
    "off",
    "too",
    "very",
    "just",
    "also",
    "you",
}


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
        anc = [
            set().union(*(wn.ancestors(pos, o) for o in wn.senses(w, pos)))
            if wn.senses(w, pos)
            else set()
            for w in words
        ]
        need = len(words) if len(words) < 3 else len(words) - 1
        count: Counter = Counter(o for a in anc for o in a)
        cands = [(c, wn.depth(pos, o), o) for o, c in count.items() if c >= need]
        cands = [
            (c, d, o) for c, d, o in cands if d >= MIN_DEPTH[pos] and wn.name(pos, o) not in VAGUE
        ]
        if cands:
            c, d, o = max(cands, key=lambda x: (x[0], x[1]))
            return Concept(wn.name(pos, o), "hypernym", pos, o)
    return None


# ---- candidates from all the shown firing words ----------------------------------------------


class Curated:
    """The curated concepts of concept_list.py, resolved against WordNet once per run, with their
    names embedded once (static word-piece vectors) for ranking. `embed`: a StaticEmbedder or None
    (then candidates are ranked by their balanced accuracy on the shown tokens)."""

    def __init__(self, wn: WordNet | None, embed=None) -> None:
        self.wn = wn
        self.concepts: list[Concept] = []
        for name, (anchors, words) in CURATED.items():
            res = []
            for a in anchors:
                lemma, pos, k = a.split("/")
                offs = wn.index(pos).get(lemma, []) if wn is not None else []
                if len(offs) > int(k):
                    res.append((pos, offs[int(k)]))
            if res or words:
                self.concepts.append(
                    Concept(name, "curated", words=tuple(words), anchors=tuple(res))
                )
        self.by_anchor: dict = {}
        for j, c in enumerate(self.concepts):
            for a in c.anchors:
                self.by_anchor.setdefault(a, []).append(j)
        self.by_word: dict = {}
        for j, c in enumerate(self.concepts):
            for w in c.words:
                self.by_word.setdefault(w, []).append(j)
        self._of: dict[str, tuple[int, ...]] = {}
        self.embed = embed
        self.vecs = None
        if embed is not None:
            # a concept's vector: the mean of its name's words ("verb of saying" -> verb, saying)
            rows = []
            for c in self.concepts:
                vs = [
                    v
                    for v in embed.vectors(
                        [w for w in c.name.replace("/", " ").split() if w != "of"]
                    )
                    if v is not None
                ]
                v = np.mean(vs, 0) if vs else np.zeros(embed.table.shape[1], np.float32)
                rows.append(v / (np.linalg.norm(v) or 1.0))
            self.vecs = np.stack(rows)  # [concepts, d]

    def of(self, key: str) -> tuple[int, ...]:
        """Indices of the curated concepts the word belongs to (cached per word)."""
        got = self._of.get(key)
        if got is None:
            out = set(self.by_word.get(key, ()))
            if self.wn is not None and self.by_anchor:
                for a in word_ancestors(key, self.wn):
                    out.update(self.by_anchor.get(a, ()))
            got = self._of[key] = tuple(sorted(out))
        return got

    def rank(self, fires: Counter, idx: list[int]) -> list[int]:
        """idx ordered by cosine between each concept's name and the firing words (weighted by
        firings) in the static embedding space."""
        if self.vecs is None or not idx:
            return idx
        words = [w for w, _ in fires.most_common(10) if w.isalpha()]
        vs = self.embed.vectors(words)
        pairs = [(fires[w], v) for w, v in zip(words, vs) if v is not None]
        if not pairs:
            return idx
        f = sum(n * v for n, v in pairs)
        f = f / (np.linalg.norm(f) or 1.0)  # [d]
        cos = self.vecs[idx] @ f  # [len(idx)]
        return [idx[j] for j in np.argsort(-cos, kind="stable")]


def _bal(tp: float, fp: float, n_fire: int, n_neg: int) -> float:
    return (tp / n_fire + 1 - fp / n_neg) / 2


def shown_candidates(
    fires: Counter, seen: Counter, chosen: list[str], wn: WordNet | None, curated: Curated | None
) -> list[Concept]:
    """The WordNet class and the curated concept that best generalize the token list over every
    word that fires in the shown windows. A candidate must hold at least half of the listed tokens
    (it names THEIR concept: "pronoun (he, she, they)", never "pronoun (bearing, en, free)"), a
    firing
    word the list does not, and raise the balanced accuracy of the list on the shown tokens:
    (recall + specificity) / 2 of "token in list or member"."""
    n_fire = sum(fires.values())
    n_neg = sum(seen.values()) - n_fire
    if not n_fire or not n_neg or not chosen:
        return []
    T = set(chosen)
    need = (len(chosen) + 1) // 2
    tp0 = sum(fires[k] for k in T)
    fp0 = sum(seen[k] - fires[k] for k in T)
    base = _bal(tp0, fp0, n_fire, n_neg)
    firing = [w for w in fires if w not in T]
    silent = [w for w, n in seen.items() if n > fires[w] and w not in T]
    out = []
    if wn is not None:
        held: Counter = Counter()
        for k in T:
            held.update(word_ancestors(k, wn))
        listed = {a for a, c in held.items() if c >= need}
        if listed:
            tp: Counter = Counter()
            new: Counter = Counter()
            for w in firing:
                for a in listed & word_ancestors(w, wn):
                    tp[a] += fires[w]
                    new[a] += 1
            cand = set()
            for a in new:
                pos, off = a
                if pos == "n" and wn.depth(pos, off) < MIN_DEPTH["n"]:
                    continue
                if wn.ic(pos, off) >= MIN_IC[pos] and wn.name(pos, off) not in VAGUE:
                    cand.add(a)
            if cand:
                fp: Counter = Counter()
                for w in silent:
                    for a in cand & word_ancestors(w, wn):
                        fp[a] += seen[w] - fires[w]
                scored = [
                    (_bal(tp0 + tp[a], fp0 + fp[a], n_fire, n_neg), wn.ic(*a), a) for a in cand
                ]
                b, _, a = max(scored)
                if b > base:
                    out.append(Concept(wn.name(*a), "hypernym", a[0], a[1]))
    if curated is not None:
        held_c: Counter = Counter()
        for k in T:
            held_c.update(curated.of(k))
        listed_c = {j for j, c in held_c.items() if c >= need}
        if listed_c:
            tp_c: Counter = Counter()
            for w in firing:
                for j in listed_c.intersection(curated.of(w)):
                    tp_c[j] += fires[w]
            if tp_c:
                fp_c: Counter = Counter()
                for w in silent:
                    for j in set(tp_c).intersection(curated.of(w)):
                        fp_c[j] += seen[w] - fires[w]
                gain = {j: _bal(tp0 + tp_c[j], fp0 + fp_c[j], n_fire, n_neg) for j in tp_c}
                ok = sorted((j for j in gain if gain[j] > base), key=lambda j: (-gain[j], j))
                if ok:
                    out.append(
                        curated.concepts[curated.rank(fires, ok)[0] if len(ok) > 1 else ok[0]]
                    )
    return out


def propose_concepts(
    fires: Counter,
    seen: Counter,
    chosen: list[str],
    wn: WordNet | None,
    curated: Curated | None = None,
) -> list[Concept]:
    """Every concept candidate of a feature (at most MAX_CANDIDATES, distinct names): the concept of
    the listed tokens (propose_concept), then the shown-window candidates (shown_candidates)."""
    out: list[Concept] = []
    c0 = propose_concept(chosen, wn)
    if c0 is not None:
        out.append(c0)
    for c in shown_candidates(fires, seen, chosen, wn, curated):
        if all(c.name != o.name for o in out):
            out.append(c)
    return out[:MAX_CANDIDATES]


# ---- contexts: predicates over (window tokens, position) --------------------------------------


def _prev(toks: list[str], i: int) -> str:
    return toks[i - 1] if i > 0 else ""


CONTEXTS: dict[str, Callable[[list[str], int], bool]] = {
    "at the start of a line": lambda t, i: i > 0 and any(n in t[i - 1] for n in _NEWLINE),
    "inside quotes": lambda t, i: sum(t[j].count(q) for j in range(i) for q in _QUOTES) % 2 == 1,
    "after a number": lambda t, i: is_number(token_key(_prev(t, i))),
    "capitalized": lambda t, i: visible(t[i])[:1].isupper(),
    "inside a word": lambda t, i: i > 0 and _continues(t[i - 1], t[i]),
    "at the start of a sentence": lambda t, i: i > 0 and _ends_sentence(t[:i]),
}
"""the reference definitions, one token at a time (window_flags computes all of them in one pass)"""
NAMES = tuple(CONTEXTS)


_MARKS = ("Ġ", "▁", " ", "Ċ", "ĉ", "\n", "\t")
_END = (".", "!", "?")


def _continues(prev: str, tok: str) -> bool:
    """tok is a word piece continuing prev's word: no word-start mark, and both sides letters."""
    return (
        not tok.startswith(_MARKS)
        and tok[:1].isalpha()
        and visible(prev)[-1:].isalpha()
        and not prev.startswith("<")
        and not prev.endswith(_MARKS)
    )  # "Ċ" is a letter to isalpha


def _ends_sentence(prefix: list[str]) -> bool:
    """The last visible text before this token ends a sentence (., !, ? possibly before a quote)."""
    for t in reversed(prefix):
        v = visible(t)
        if v:
            return v.rstrip("\"\u201d')").endswith(_END)
    return False


@functools.lru_cache(maxsize=1 << 18)
def _token_props(t: str) -> tuple:
    """What window_flags needs of one token, computed once per distinct token string (a window
    holds few distinct strings over a ~50k vocabulary): (capitalized, quote count, has a newline,
    is a number, ends a sentence or None when invisible, may continue a word, may be continued)."""
    v = visible(t)
    return (
        v[:1].isupper(),
        sum(t.count(q) for q in _QUOTES),
        any(n in t for n in _NEWLINE),
        is_number(token_key(t)),
        v.rstrip("\"\u201d')").endswith(_END) if v else None,
        not t.startswith(_MARKS) and t[:1].isalpha(),
        v[-1:].isalpha() and not t.startswith("<") and not t.endswith(_MARKS),
    )


def window_flags(toks: list[str]) -> list[tuple[bool, ...]]:
    """Per token, whether each context of NAMES holds: one pass over the window (quote parity is
    a running count, not a rescan of the prefix; each token's own properties are memoized)."""
    out = []
    quotes = 0
    prev_nl = prev_num = prev_end = prev_open = False
    for t in toks:
        cap, q, nl, num, end, cont, opn = _token_props(t)
        out.append((prev_nl, quotes % 2 == 1, prev_num, cap, cont and prev_open, prev_end))
        quotes += q
        prev_nl, prev_num, prev_open = nl, num, opn
        if end is not None:
            prev_end = end
    return out


def context_fn(name: str) -> Callable[[list[str], int], bool]:
    if name.startswith('after "') and name.endswith('"'):
        k = name[len('after "') : -1]
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
    by_flags: Counter = Counter()  # (flags, fires) -> tokens: the names are expanded once below
    for e in shown:
        toks = e.tokens
        f = list(map(fired, e.acts))
        by_flags.update(zip(window_flags(toks), f))  # (flags[i], a > 0) per token, in order
        for i in compress(range(len(f)), f):
            if i > 0 and not _token_props(toks[i - 1])[2]:  # that is a line start
                before[token_key(toks[i - 1])] += 1
    for (f, fires), c in by_flags.items():
        n_all += c
        if fires:
            n_fire += c
        for n, h in zip(NAMES, f):
            if h:
                allc[n] += c
                if fires:
                    fire[n] += c
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


def predict(
    held_windows, tokens: set[str], concept: Concept | None, context: str | None, wn: WordNet | None
) -> tuple[list[bool], list[bool]]:
    """(prediction, truth) per token of the windows: named token or concept member, within
    context."""
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


class Trials:
    """A held-out part's tokens as (key, fires) counts, so a context-free predicate ("token in T or
    a member of C") is scored per distinct key, not per token: the same balanced accuracy as
    `bal_acc(*predict(...))`, which stays the reference (a test pins them equal)."""

    def __init__(self, windows) -> None:
        self.windows = windows
        self.pos: Counter = Counter()
        self.neg: Counter = Counter()
        count_trials(windows, self.pos, self.neg)
        self.n_pos = sum(self.pos.values())
        self.n_neg = sum(self.neg.values())

    def score(
        self,
        tokens: set[str],
        concept: Concept | None = None,
        context: str | None = None,
        wn: WordNet | None = None,
    ) -> float | None:
        if not self.n_pos or not self.n_neg:
            return None
        if context is not None:
            return bal_acc(*predict(self.windows, tokens, concept, context, wn))
        if not tokens and concept is None:
            return 0.5  # every token predicted to fire
        tp = fp = 0
        for k in set(self.pos) | set(self.neg):
            if k in tokens or (concept is not None and concept.member(k, wn)):
                tp += self.pos[k]
                fp += self.neg[k]
        return (tp / self.n_pos + (self.n_neg - fp) / self.n_neg) / 2


def choose(
    valid_windows,
    tokens: list[str],
    concept: Concept | list[Concept] | None,
    context: str | None,
    wn: WordNet | None,
    trials: Trials | None = None,
) -> Choice:
    """Keep the best concept candidate, then the context, only where each raises validation balanced
    accuracy over what is kept so far (ties drop the word)."""
    T = set(tokens)
    cands = (
        [] if concept is None else ([concept] if isinstance(concept, Concept) else list(concept))
    )
    tr = trials if trials is not None else Trials(valid_windows)
    base = tr.score(T)
    log: dict = {"tokens": base}
    if base is None or (not cands and context is None):
        return Choice(
            None,
            None,
            {
                **log,
                "score": None if base is None else round(base, 4),
                "kept": "tokens" if base is not None else "no validation windows",
            },
        )
    keep_c = None
    best = base
    if cands:
        scores = {c.name: tr.score(T, c, None, wn) for c in cands}
        top = max(cands, key=lambda c: scores[c.name] if scores[c.name] is not None else -1.0)
        log["concept"] = scores[top.name]
        if len(cands) > 1:
            log["concepts"] = {n: None if v is None else round(v, 4) for n, v in scores.items()}
        if scores[top.name] is not None and scores[top.name] > best:
            keep_c, best = top, scores[top.name]
    keep_x = None
    if context is not None:
        s = tr.score(T, keep_c, context, wn)
        log["context"] = s
        if s is not None and s > best:
            keep_x, best = context, s
    log["score"] = best
    log = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in log.items()}
    log["kept"] = "+".join(
        ["tokens"] + (["concept"] if keep_c else []) + (["context"] if keep_x else [])
    )
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

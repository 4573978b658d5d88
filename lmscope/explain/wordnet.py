"""A minimal reader of the WordNet 3.0 database files (Debian's wordnet-base, /usr/share/wordnet).

Only what concept naming needs (concepts.py): the senses of a word (index.{noun,verb}, base forms
by WordNet's morphy rules and the *.exc exception lists), a synset's lemmas and hypernyms
(data.{noun,verb}, read by seeking to the synset's byte offset, as the offsets in the files are),
its ancestors with their depth, the multi-word lemmas a word is part of ("good_old_days"), and a
synset's intrinsic information content (how specific it is, from the size of the hierarchy below
it).
No download, no nltk: the files the corpus builder already reads (capture/corpus.py). Every lookup
is cached, so a run over thousands of features reads each synset once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..capture.corpus import WORDNET_DIR

POS = {"n": "noun", "v": "verb"}
# WordNet's morphy detachment rules (wndb(5WN) / morph.c): suffix -> replacement, per part of
# speech.
_RULES = {
    "n": [
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
        ("s", ""),
    ],
    "v": [
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
        ("s", ""),
    ],
}


class WordNet:
    def __init__(self, root: str | Path = WORDNET_DIR) -> None:
        self.root = Path(root)
        self._index: dict[str, dict[str, list[int]]] = {}
        self._exc: dict[str, dict[str, list[str]]] = {}
        self._parts: dict[str, list[tuple[str, int]]] | None = None
        self._fh: dict[str, object] = {}
        self._below: dict[str, dict[int, int]] = {}
        self.synset = lru_cache(maxsize=200_000)(self._synset)
        self.ancestors = lru_cache(maxsize=200_000)(self._ancestors)
        self.senses = lru_cache(maxsize=200_000)(self._senses)

    @classmethod
    def available(cls, root: str | Path = WORDNET_DIR) -> bool:
        return all(
            (Path(root) / f"{k}.{p}").is_file() for p in POS.values() for k in ("index", "data")
        )

    def index(self, pos: str) -> dict[str, list[int]]:
        if pos not in self._index:
            out: dict[str, list[int]] = {}
            with open(self.root / f"index.{POS[pos]}", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith(" "):
                        continue  # license header
                    f = line.split()
                    n_syn, n_ptr = int(f[2]), int(f[3])
                    out[f[0]] = [
                        int(x) for x in f[6 + n_ptr : 6 + n_ptr + n_syn]
                    ]  # most frequent sense first
            self._index[pos] = out
        return self._index[pos]

    def exceptions(self, pos: str) -> dict[str, list[str]]:
        if pos not in self._exc:
            out: dict[str, list[str]] = {}
            p = self.root / f"{POS[pos]}.exc"
            if p.is_file():
                for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                    f = line.split()
                    if len(f) >= 2:
                        out[f[0]] = f[1:]
            self._exc[pos] = out
        return self._exc[pos]

    def base_forms(self, word: str, pos: str) -> list[str]:
        """The word itself if WordNet has it, else its morphy base forms ("days" -> "day")."""
        idx = self.index(pos)
        w = word.lower().replace(" ", "_")
        out = [w] if w in idx else []
        for b in self.exceptions(pos).get(w, []):
            if b in idx and b not in out:
                out.append(b)
        if not out:
            for suf, rep in _RULES[pos]:
                if w.endswith(suf) and len(w) > len(suf) + 1:
                    b = w[: len(w) - len(suf)] + rep
                    if b in idx and b not in out:
                        out.append(b)
        return out

    def _senses(self, word: str, pos: str, k: int = 3) -> tuple[int, ...]:
        """The first k synset offsets (most frequent senses first) of the word's base forms."""
        out: list[int] = []
        for b in self.base_forms(word, pos):
            out += [o for o in self.index(pos)[b] if o not in out]
        return tuple(out[:k])

    def _synset(self, pos: str, offset: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(lemmas, hypernym offsets) of one synset; instance hypernyms (@i) count as hypernyms."""
        fh = self._fh.get(pos)
        if fh is None:
            # noqa: SIM115 (kept open, cached)
            fh = self._fh[pos] = open(self.root / f"data.{POS[pos]}", "rb")
        fh.seek(offset)
        f = fh.readline().decode("utf-8", errors="replace").split("|")[0].split()
        n_w = int(f[3], 16)
        lemmas = tuple(f[4 + 2 * i] for i in range(n_w))
        j = 4 + 2 * n_w
        n_p = int(f[j])
        hyper = []
        for i in range(n_p):
            sym, off, p = f[j + 1 + 4 * i], int(f[j + 2 + 4 * i]), f[j + 3 + 4 * i]
            if sym in ("@", "@i") and p == pos:
                hyper.append(off)
        return lemmas, tuple(hyper)

    def _ancestors(self, pos: str, offset: int) -> dict[int, int]:
        """offset -> steps up from this synset (itself at 0), through every hypernym path."""
        out = {offset: 0}
        frontier = [offset]
        step = 0
        while frontier:
            step += 1
            nxt = []
            for o in frontier:
                for h in self.synset(pos, o)[1]:
                    if h not in out:
                        out[h] = step
                        nxt.append(h)
            frontier = nxt
        return out

    def depth(self, pos: str, offset: int) -> int:
        """Length of the longest hypernym path from the synset to a root (entity = 0)."""
        hyper = self.synset(pos, offset)[1]
        return 0 if not hyper else 1 + max(self.depth(pos, h) for h in hyper)

    def below(self, pos: str) -> dict[int, int]:
        """offset -> number of synsets under it (all hyponym levels, itself excluded); one read of
        data.{noun,verb} (~1 s), kept for the run."""
        if pos not in self._below:
            parents: dict[int, tuple[int, ...]] = {}
            with open(self.root / f"data.{POS[pos]}", "rb") as fh:
                for raw in fh:
                    if raw.startswith(b" "):
                        continue  # license header
                    f = raw.split(b"|")[0].split()
                    n_w = int(f[3], 16)
                    j = 4 + 2 * n_w
                    n_p = int(f[j])
                    parents[int(f[0])] = tuple(
                        int(f[j + 2 + 4 * i])
                        for i in range(n_p)
                        if f[j + 1 + 4 * i] in (b"@", b"@i") and f[j + 3 + 4 * i] == pos.encode()
                    )
            anc: dict[int, frozenset[int]] = {}

            def up(o: int) -> frozenset[int]:  # every synset above o (WordNet is < 20 levels deep)
                got = anc.get(o)
                if got is None:
                    s: set[int] = set()
                    for h in parents.get(o, ()):
                        s.add(h)
                        s |= up(h)
                    got = anc[o] = frozenset(s)
                return got

            count: dict[int, int] = dict.fromkeys(parents, 0)
            for o in parents:
                for a in up(o):
                    count[a] = count.get(a, 0) + 1
            self._below[pos] = count
        return self._below[pos]

    def ic(self, pos: str, offset: int) -> float:
        """Intrinsic information content (Seco, Veale & Hayes 2004): 1 - log(hyponyms + 1) /
        log(synsets),
        1 for a leaf, 0 for the root of the whole hierarchy ("entity"); no corpus counts needed."""
        import math

        below = self.below(pos)
        return 1.0 - math.log(below.get(offset, 0) + 1) / math.log(len(below))

    def name(self, pos: str, offset: int) -> str:
        return self.synset(pos, offset)[0][0].replace("_", " ")

    def compounds(self, word: str) -> list[tuple[str, int]]:
        """Noun synsets of the multi-word lemmas that contain `word` as one of their words."""
        if self._parts is None:
            parts: dict[str, list[tuple[str, int]]] = {}
            for lemma, offs in self.index("n").items():
                if "_" in lemma and offs:
                    for w in set(lemma.split("_")):
                        parts.setdefault(w, []).append((lemma, offs[0]))
            self._parts = parts
        return self._parts.get(word.lower(), [])


_WN: WordNet | None = None


def wordnet() -> WordNet | None:
    """The shared reader, or None where wordnet-base is not installed (labels then name no
    concept)."""
    global _WN
    if _WN is None and WordNet.available():
        _WN = WordNet()
    return _WN

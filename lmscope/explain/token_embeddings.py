"""Contextual token embeddings of the atlas's text, computed once per atlas and cached.

Scoring a label against its held-out windows needs sentence embeddings of those windows. Embedding
each window per feature cannot scale (4,608 features x ~25 windows is 115k embedder calls; a 140k
feature atlas 3.5M), but the windows are slices of a few corpus contexts shared by all features.
So the text is embedded ONCE:

1. the union of all stored windows of the atlas's dictionaries gives, per global token id (context
   x ctx_len + position), its token string; runs of consecutive ids inside one context are cut into
   segments of at most `MAX_SEG` tokens (the text around each token, as the profiling pass saw it);
2. each segment runs through the sentence embedder (all-MiniLM-L6-v2, batched); each token's vector
   is the mean of the last hidden states of its word pieces (character offsets map word pieces to
   the
   model's tokens), and its word-piece count is kept;
3. a window's embedding is then the word-piece-weighted mean of its tokens' vectors, i.e. the
   sentence-transformers mean pool over the window's word pieces, read in context; one token's
   vector
   is that token in its context (the simulation scorer's input).

The result is cached under ATLAS/cache/, keyed by the atlas build, the dictionaries, the embedder
and this module's schema; later runs (another explainer, an LLM's labels) load it in a second.
Only segments holding tokens that the selected features' held-out windows need are embedded; the
cache grows as other features need other segments.

Label texts are embedded phrase by phrase (`label_phrases`): a label "horse, pony | says "gallop""
is the mean of the sentence embeddings of "horse", "pony" and "gallop", each embedded once for all
features (a free-text label without separators is one phrase). The same rule for every method and
baseline keeps the comparison fair; it is also what makes labels cost ~1 embedder call per NEW
word instead of one per label.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = 1
MAX_SEG = 64
"""tokens per embedded segment (a context is cut into pieces of at most this many tokens)"""
BATCH = 64
"""segments per embedder forward"""


def _is_special(t: str) -> bool:
    return t.startswith("<") and t.endswith(">") and len(t) < 16 and " " not in t


@dataclass
class TokenEmbeddings:
    ids: np.ndarray
    """[n] int64 global token ids, sorted"""
    vecs: np.ndarray
    """[n, d] float16 mean word-piece vector of each token (zero for tokens without word pieces)"""
    counts: np.ndarray
    """[n] int16 word pieces per token"""

    def rows(self, gids: np.ndarray) -> np.ndarray:
        """Row of each global id in `ids` (-1 where the id was never embedded)."""
        r = np.searchsorted(self.ids, gids)
        r = np.minimum(r, len(self.ids) - 1)
        return np.where(self.ids[r] == gids, r, -1) if len(self.ids) else np.full(len(gids), -1)

    def _f32(self) -> np.ndarray:
        """vecs as float32, converted once per embedding set (not once per feature: the per-call
        conversion of gathered rows was the scorers' largest numpy cost)."""
        return self._tables()[0]

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(vecs as float32, vecs x word pieces as float32), each with one zero row appended (row
        -1: a token never embedded), built once per embedding set. The product is the one the
        window pool took per feature and gathered row: the same float32 multiply, done once."""
        got = getattr(self, "_cache", None)
        if got is None or got[0] is not self.vecs:
            f = np.zeros((len(self.vecs) + 1, self.vecs.shape[1]), dtype=np.float32)
            f[:-1] = self.vecs
            fw = f * np.r_[self.counts, 0].astype(np.float32)[:, None]
            got = self._cache = (self.vecs, f, fw)
        return got[1], got[2]

    def windows(self, spans: list[tuple[int, int]]) -> np.ndarray:
        """[len(spans), d] unit vectors: word-piece mean pool of each window [start, end)."""
        if not spans:
            return np.zeros((0, self.vecs.shape[1]), dtype=np.float32)
        ab = np.asarray(spans, dtype=np.int64)
        lens = ab[:, 1] - ab[:, 0]
        # One gather of [w, longest] rows (row -1 is the zero row), then each window's sum in the
        # order np.add.reduceat takes it (a per-segment strided loop, ~1 ms per feature), over all
        # windows of one length at once: bit for bit the pool it computed (a test pins it).
        pos = np.arange(lens.max())
        r = self.rows(ab[:, :1] + pos)
        r[pos >= lens[:, None]] = -1
        v = self._tables()[1][r]  # [w, longest, d]
        out = np.empty((len(ab), v.shape[2]), dtype=np.float32)
        for n in np.unique(lens).tolist():
            sel = np.nonzero(lens == n)[0]
            out[sel] = _reduce_sum(v[sel, :n])
        return _unit(out)  # the mean's direction = the sum's

    def held(self, held) -> HeldVectors:
        """The vectors every label of one feature is scored against (computed once per feature)."""
        from .split import span

        pos = [s for e in held.pos if (s := span(e))]
        neg = [s for e in held.neg if (s := span(e))]
        ws = [(s, e) for e in held.pos + held.neg if (s := span(e)) is not None]
        if ws:
            g = np.concatenate([np.arange(a, b) for (a, b), _ in ws])
            a = np.asarray(
                [x for _, e in ws for x in (e.acts if e.acts else [0.0] * len(e.tokens))],
                dtype=np.float64,
            )
            order = np.lexsort((-a, g))  # by id, highest activation first
            g, a = g[order], a[order]
            keep = np.r_[True, g[1:] != g[:-1]]  # one entry per distinct token
            g, a = g[keep], a[keep]
        else:
            g, a = np.zeros(0, np.int64), np.zeros(0)
        return HeldVectors(self.windows(pos + neg), len(pos), len(neg), self.tokens(g), a)

    def tokens(self, gids: np.ndarray) -> np.ndarray:
        """[len(gids), d] unit vectors of single tokens in context (zero where unknown or empty)."""
        return _unit(self._tables()[0][self.rows(gids)])


@dataclass
class HeldVectors:
    """One feature's held-out part as vectors: what the embedding and simulation scorers read."""

    windows: np.ndarray
    """[n_pos + n_neg, d] unit vectors of the activating windows, then the non-activating ones"""
    n_pos: int
    n_neg: int
    tokens: np.ndarray
    """[t, d] unit vectors of the distinct held-out tokens, each read in its context"""
    acts: np.ndarray
    """[t] the feature's true activation on each (0 in non-activating windows)"""


def _reduce_sum(v: np.ndarray) -> np.ndarray:
    """[w, n, d] -> [w, d]: the sum over axis 1 with numpy's reduction order along a strided axis
    (what np.add.reduce / reduceat do for one segment): the first row, plus the pairwise sum of the
    rest (eight running sums over blocks of eight, combined as a tree, then the remainder in
    order; in order for fewer than eight)."""
    first, rest = v[:, 0], v[:, 1:]
    m = rest.shape[1]
    if m == 0:
        return first.copy()
    if m < 8:
        acc = rest[:, 0].copy()
        for i in range(1, m):
            acc += rest[:, i]
        return first + acc
    r = [rest[:, j].copy() for j in range(8)]
    i = 8
    while i < m - m % 8:
        for j in range(8):
            r[j] += rest[:, i + j]
        i += 8
    acc = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for k in range(i, m):
        acc += rest[:, k]
    return first + acc


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def corpus_tokens(db, hooks: list[str]) -> tuple[dict[int, str], dict[str, np.ndarray]]:
    """(global token id -> token string, hook -> [n, 3] int64 rows (feature, start, end) of every
    stored window's span), over every stored window of these dictionaries.

    From the packed peaks (AtlasDB.example_spans) and the stored contexts: decoding every window
    to JSON and back took ~4 s per dictionary of the whole-model atlas, 124 s of its explain run.
    """
    spans = {h: db.example_spans(h) for h in hooks}
    rows = [r for r in spans.values() if len(r)]
    if not rows:
        return {}, spans
    allr = np.concatenate(rows)
    # Every token inside some window: a difference array over the global ids.
    mark = np.zeros(int(allr[:, 2].max()) + 1, dtype=np.int64)
    np.add.at(mark, allr[:, 1], 1)
    np.add.at(mark, allr[:, 2], -1)
    gids = np.nonzero(np.cumsum(mark) > 0)[0]
    return dict(zip(gids.tolist(), db.token_texts(gids))), spans


def segments(
    gids: np.ndarray, ctx_len: int | None, max_seg: int = MAX_SEG
) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive ids, cut at context ends and every max_seg tokens."""
    if not len(gids):
        return []
    brk = np.nonzero(np.diff(gids) != 1)[0] + 1
    if ctx_len:
        brk = np.union1d(brk, np.nonzero(np.diff(gids // ctx_len) != 0)[0] + 1)
    out = []
    for a, b in zip(np.r_[0, brk], np.r_[brk, len(gids)]):
        s, e = int(gids[a]), int(gids[b - 1]) + 1
        out += [(x, min(x + max_seg, e)) for x in range(s, e, max_seg)]
    return out


class ContextEmbedder:
    """Builds, caches and serves `TokenEmbeddings` for one atlas and one sentence embedder."""

    def __init__(
        self, db, hooks: list[str], ctx_len: int | None, cache_dir: Path, embedder
    ) -> None:
        self.emb = embedder
        self.text, self.spans = corpus_tokens(db, hooks)
        gids = np.fromiter(sorted(self.text), dtype=np.int64, count=len(self.text))
        self.segs = segments(gids, ctx_len)
        self.seg_starts = np.asarray([s for s, _ in self.segs], dtype=np.int64)
        build = db.meta().get("build") or {}
        key = json.dumps(
            {
                "schema": SCHEMA,
                "max_seg": MAX_SEG,
                "build": build.get("identity"),
                "completed": build.get("completed"),
                "hooks": sorted(hooks),
                "embedder": embedder.name,
            },
            sort_keys=True,
        )
        self.path = (
            cache_dir / f"token_embeddings.{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
        )
        self.done: set[int] = set()
        self.te = TokenEmbeddings(
            np.zeros(0, np.int64), np.zeros((0, embedder.dim), np.float16), np.zeros(0, np.int16)
        )
        if self.path.is_file():
            z = np.load(self.path)
            self.te = TokenEmbeddings(z["ids"], z["vecs"], z["counts"])
            self.done = set(z["segs"].tolist())
        self.embedded_tokens = 0
        """tokens embedded by this process (0 when the cache had everything)"""

    def spans_of(self, features: list[tuple[str, int]]) -> np.ndarray:
        """[n, 2] spans (start, end) of every stored window of these (hook, feature)s."""
        out = []
        for h in dict.fromkeys(h for h, _ in features):
            rows = self.spans.get(h, np.zeros((0, 3), np.int64))
            want = np.asarray([i for hh, i in features if hh == h], dtype=np.int64)
            out.append(rows[np.isin(rows[:, 0], want), 1:])
        return np.concatenate(out) if out else np.zeros((0, 2), np.int64)

    def ensure(self, spans) -> TokenEmbeddings:
        """Embed every segment that meets one of these windows ([n, 2] start, end) and is not cached
        yet; save the cache."""
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        # Segment range of each window, marked with a difference array: [first, last] per window.
        first = np.maximum(np.searchsorted(self.seg_starts, spans[:, 0], "right") - 1, 0)
        last = np.searchsorted(self.seg_starts, spans[:, 1] - 1, "right") - 1
        mark = np.zeros(len(self.segs) + 1, dtype=np.int64)
        ok = last >= first
        np.add.at(mark, first[ok], 1)
        np.add.at(mark, last[ok] + 1, -1)
        need = np.nonzero(np.cumsum(mark)[:-1] > 0)[0]
        todo = [self.segs[i] for i in need if self.segs[i][0] not in self.done]
        if not todo:
            return self.te
        # Batches of similar WORD-PIECE counts (what the embedder pads to), not token counts: the
        # padding went from 13% of the forward's work to ~1% on the default atlas. A segment's
        # vectors do not depend on its batch beyond float rounding (~1e-7; the padding is masked).
        toks_of = {sg: [self.text[g] for g in range(*sg)] for sg in todo}
        n_pieces = self.emb.n_pieces([segment_text(toks_of[sg])[0] for sg in todo])
        todo = [todo[i] for i in np.argsort(n_pieces, kind="stable")]
        ids, vecs, counts = [self.te.ids], [self.te.vecs], [self.te.counts]
        for i in range(0, len(todo), BATCH):
            part = todo[i : i + BATCH]
            v, c = self.emb.embed_tokens([toks_of[sg] for sg in part])
            for (a, b), vv, cc in zip(part, v, c):
                ids.append(np.arange(a, b, dtype=np.int64))
                vecs.append(vv.astype(np.float16))
                counts.append(cc.astype(np.int16))
            self.embedded_tokens += sum(b - a for a, b in part)
        ids_a = np.concatenate(ids)
        order = np.argsort(ids_a, kind="stable")
        self.te = TokenEmbeddings(
            ids_a[order], np.concatenate(vecs)[order], np.concatenate(counts)[order]
        )
        self.done |= {s for s, _ in todo}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            ids=self.te.ids,
            vecs=self.te.vecs,
            counts=self.te.counts,
            segs=np.asarray(sorted(self.done), dtype=np.int64),
        )
        os.replace(tmp, self.path)
        return self.te


_SPLIT = re.compile(r"[,|()\[\]]")
_LEAD = re.compile(r"^(says|after|before|inside|at)\s+", re.I)


def label_phrases(text: str, tokens: list[str] | None = None) -> list[str]:
    """The phrases a label's INPUT side is embedded as. The output side ("| says ...") is left out:
    these scorers judge where the feature fires, as the direct scorer does, and a label and its
    equal-budget baseline share the same output part anyway. The rest is split on , | ( ) [ ],
    quotes and a leading 'after'/'inside'/... dropped, empty pieces skipped; plus the label's
    structured tokens not already there (a "," or "(" token is lost by the split). A label with
    nothing left is kept whole."""
    head = re.split(r"\|\s*says\b|^says\b", text)[0]
    out = []
    for part in _SPLIT.split(head):
        p = _LEAD.sub("", part.strip()).strip().strip("\"'`").strip()
        if p and p not in out:
            out.append(p)
    out += [t for t in dict.fromkeys(tokens or []) if t and t not in out]
    return out or ([text.strip()] if text.strip() else [])


def segment_text(tokens: list[str]) -> tuple[str, list[int]]:
    """Segment text (special tokens dropped) and each token's start character. Word-level tokenizers
    carry no spaces: their tokens are joined with one."""
    sep = "" if any(" " in t for t in tokens) else " "
    starts, parts, n = [], [], 0
    for t in tokens:
        starts.append(n)
        if not _is_special(t):
            parts.append(t + sep)
            n += len(t) + len(sep)
    return "".join(parts), starts

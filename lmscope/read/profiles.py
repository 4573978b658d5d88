"""What the viewer shows about one feature, the atlas overview and search, from whatever exists.

The atlas DB (`lmscope.atlas.db.AtlasDB`, written by the atlas stage) holds feature profiles,
explanations, scores and search indexes; `Reader.db` is that DB opened read-only, or None
before `lmscope atlas build`. Without it (or for a dictionary it has not profiled yet, its
UserError) the viewer shows what the dictionaries alone give (density from SAELens' sparsity
file, logit effects = decoder row times unembedding, "vocabulary projection", as in
SAEDashboard / Neuronpedia), and features are shown unlabeled.

    page = feature_profile(reader, "blocks.15.resid_post", 1234)   # atlas.feature_page.FeaturePage
    overview(reader)                                                  # dictionaries, distributions
    search_text(reader, "the horse")                                  # features that fire on text
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atlas.db import LogitEffect
from ..atlas.feature_page import FeaturePage, LogitEffects, from_db
from ..atlas.histogram import linear_histogram
from ..dictionaries.feature_id import format_feature_id
from ..errors import UserError


# --- from the dictionaries alone ------------------------------------------------------------
def check_feature(reader, hook: str, feature: int) -> None:
    if hook not in reader.dicts:
        raise LookupError(
            f"no dictionary {hook!r} in this atlas; it has: {', '.join(reader.hooks)}"
        )
    d_sae = reader.dicts[hook].d_sae
    if not 0 <= feature < d_sae:
        raise LookupError(f"feature {feature} is out of range for {hook} (0..{d_sae - 1})")


@torch.no_grad()
def logit_effects(reader, hook: str, feature: int, k: int = 10) -> LogitEffects:
    """Top promoted / suppressed output tokens of a feature: decoder row @ unembedding.

    The direct path only (ignores the final norm's scale and later layers), as SAEDashboard's
    "logit effects". For a transcoder the decoder row lives in mlp_out, also the residual space.
    """
    d = reader.dicts[hook]
    W_U = reader.lm.model.get_output_embeddings().weight  # [vocab, d_model]
    row = d.W_dec[feature].to(W_U.dtype)  # [d_model]
    if row.shape[0] != W_U.shape[1]:
        return LogitEffects([], [])
    eff = (W_U @ row).float()  # [vocab]
    n = min(k, eff.numel())
    up, down = eff.topk(n), (-eff).topk(n)
    tok = reader.lm.to_str_tokens
    return LogitEffects(
        promoted=[
            LogitEffect(t, int(i), float(v))
            for t, i, v in zip(tok(up.indices), up.indices, up.values)
        ],
        suppressed=[
            LogitEffect(t, int(i), -float(v))
            for t, i, v in zip(tok(down.indices), down.indices, down.values)
        ],
        histogram=linear_histogram(eff, 30),
    )


def dictionary_density(reader, hook: str) -> torch.Tensor | None:
    """Firing frequency per feature [d_sae] from SAELens' sparsity file (log10 freq), if saved."""
    if reader.atlas is None:
        return None
    from ..layout import AtlasLayout

    path = Path(AtlasLayout(reader.atlas).dictionary_dir(hook)) / "sparsity.safetensors"
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return (10 ** load_file(str(path))["sparsity"].float()).clamp(max=1.0)
    except (OSError, KeyError, SafetensorError):  # an unreadable optional file: no density shown
        return None


def feature_profile(reader, hook: str, feature: int) -> FeaturePage:
    """Everything the feature page shows. LookupError for a feature the reader's dictionaries
    lack; the DB's UserError (a dictionary it has not profiled yet) means: no profile, no label."""
    from dataclasses import replace

    check_feature(reader, hook, feature)
    page = FeaturePage(hook, feature, None, None, None)
    if reader.db is not None:
        try:
            page = from_db(reader.db, hook, feature)
        except UserError:
            pass
    computed = logit_effects(reader, hook, feature)
    if page.logits.promoted:  # the atlas build's logit effects (same formula, stored); no histogram
        computed = replace(page.logits, histogram=computed.histogram)
    page.logits = computed
    if page.density is None:
        dens = dictionary_density(reader, hook)
        page.density = float(dens[feature]) if dens is not None else None
    return page


def search_text(reader, text: str, *, limit: int = 20) -> list[dict]:
    """Features that fire most on `text`: max activation over its tokens (BOS excluded), via the
    one encode path of `Reader`."""
    tokens, feats = reader.encode(text)
    strs = reader.lm.to_str_tokens(tokens[0])
    start = 1 if tokens.shape[1] > 1 and int(tokens[0, 0]) == reader.lm.bos_token_id else 0
    rows = []
    for hook in reader.hooks:
        f = feats[hook][start:]  # [pos, d_sae]
        if f.numel() == 0:
            continue
        best, where = f.max(dim=0)  # [d_sae]
        n = min(limit, best.numel())
        vals, idx = best.topk(n)
        for v, i in zip(vals.tolist(), idx.tolist()):
            if v <= 0:
                break
            label = reader.label(hook, i)
            rows.append(
                {
                    "id": format_feature_id(hook, i),
                    "hook": hook,
                    "feature": i,
                    "act": v,
                    "label": label,
                    "token": strs[start + int(where[i])],
                }
            )
    rows.sort(key=lambda r: -r["act"])
    return rows[:limit]


def search_labels(reader, query: str, *, limit: int = 20) -> list[dict]:
    """Features whose explanation matches `query` (the atlas DB's full-text search)."""
    if not query.strip():
        raise UserError("the search query is empty")
    if reader.db is None:
        return []
    from dataclasses import asdict

    out, seen = [], set()
    # one row per feature (a label and its explanation may both match)
    for h in reader.db.search_labels(query, limit):
        key = (h.hook, h.feature)
        if key in seen or h.hook not in reader.dicts:
            continue
        seen.add(key)
        out.append(
            {
                **asdict(h),
                "id": format_feature_id(*key),
                "label": reader.label(*key),
                "match": h.text,
                "score": -h.rank,
            }
        )
    return out


def overview(reader) -> dict:
    """The atlas overview: dictionaries with their shape, density and label/score summaries."""
    dicts = []
    for hook in reader.hooks:
        d = reader.dicts[hook]
        cfg = d.cfg
        entry = {
            "hook": hook,
            "arch": cfg.arch,
            "d_in": d.d_in,
            "d_sae": d.d_sae,
            "k": cfg.k if cfg.arch in ("topk", "batchtopk") else None,
            "transcoder": bool(getattr(cfg, "is_transcoder", False)),
            "density_histogram": None,
            "dead": None,
        }
        dens = dictionary_density(reader, hook)
        if reader.db is not None:  # the atlas build's densities are measured on more text
            try:
                rows = reader.db.densities(hook)
            except UserError:  # a dictionary the DB has not profiled yet
                rows = []
            if rows:
                dens = torch.tensor([r[1] or 0.0 for r in rows])
        if dens is not None:
            logd = dens.clamp(min=1e-10).log10()
            entry["density_histogram"] = linear_histogram(logd, 20).to_dict()
            entry["dead"] = int((dens <= 1e-9).sum())
        dicts.append(entry)
    summary, scores = None, []
    if reader.db is not None:
        full = reader.db.summary()
        summary = {k: full[k] for k in ("n_features", "n_explanations")}
        groups: dict[str, list[float]] = {}
        for scorer, metric, value in reader.db.score_values():
            groups.setdefault(f"{scorer} {metric}", []).append(float(value))
        for name, vals in sorted(groups.items()):
            t = torch.tensor(vals)
            scores.append(
                {
                    "name": name,
                    "n": len(vals),
                    "mean": float(t.mean()),
                    "histogram": linear_histogram(t, 10).to_dict(),
                }
            )
    return {
        "model": reader.lm.name,
        "atlas": reader.atlas.name if reader.atlas else None,
        "dictionaries": dicts,
        "db": summary,
        "scores": scores,
        "has_db": reader.db is not None,
    }

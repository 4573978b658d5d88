"""What the viewer shows about one feature, the atlas overview and search, from whatever exists.

The atlas DB (`lmscope.atlas.db.AtlasDB`, written by the atlas stage) holds feature profiles,
explanations, scores and search indexes. This module only *reads* it, through a small adapter
that tolerates a DB that is missing, older or half-written: then the viewer still shows what
the dictionaries alone give (density from SAELens' sparsity file, logit effects = decoder row
times unembedding, "vocabulary projection", as in SAEDashboard / Neuronpedia), and features are
shown unlabeled.

    prof = feature_profile(reader, "blocks.15.resid_post", 1234)   # dict, JSON-ready
    overview(reader)                                                  # dictionaries, distributions
    search_text(reader, "the horse")                                  # features that fire on text
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserError


class DBView:
    """Read-only adapter over AtlasDB: each method returns None when the DB cannot answer.

    One SQLite connection is shared by the server's threads, so calls are serialized.
    """

    def __init__(self, db) -> None:
        import threading

        self.db = db
        self._lock = threading.Lock()

    def _call(self, names: tuple[str, ...], *args, **kw):
        for name in names:
            fn = getattr(self.db, name, None)
            if callable(fn):
                try:
                    with self._lock:
                        return fn(*args, **kw)
                except Exception:  # unknown feature, half-written or older DB: show what we have
                    return None
        return None

    def score_values(self) -> list[tuple[str, str, float]] | None:
        """(scorer, metric, value) of every stored score, for the overview's distributions."""
        try:
            with self._lock:
                return [tuple(r) for r in self.db.conn.execute("SELECT scorer, metric, value FROM scores")]
        except Exception:
            return None

    def densities(self, hook: str):
        return self._call(("densities",), hook)

    def label(self, hook: str, feature: int) -> str | None:
        out = self._call(("label", "get_label", "explanation"), hook, feature)
        if out is None or isinstance(out, str):
            return out or None
        return getattr(out, "text", None) or getattr(out, "label", None) or None

    def profile(self, hook: str, feature: int):
        return self._call(("profile", "get_profile", "feature"), hook, feature)

    def explanations(self, hook: str, feature: int):
        return self._call(("explanations", "get_explanations"), hook, feature)

    def search_labels(self, query: str, limit: int):
        return self._call(("search_labels", "search_explanations", "search"), query, limit=limit)

    def search_text(self, text: str, limit: int):
        return self._call(("search_text", "features_for_text", "search_by_text"), text, limit=limit)

    def summary(self):
        return self._call(("summary", "stats", "overview"))


def open_db(layout) -> DBView | None:
    """The atlas DB behind an adapter, or None when there is none (or it cannot be opened)."""
    if not layout.db_path.exists():
        return None
    try:
        from ..atlas.db import AtlasDB
    except ImportError:
        return None
    try:
        return DBView(AtlasDB(layout.db_path, readonly=True))
    except Exception:
        return None


def to_jsonable(obj):
    """Dataclasses / NamedTuples / tensors from the DB -> plain JSON values."""
    import dataclasses

    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "_asdict"):
        return to_jsonable(obj._asdict())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return str(obj)


# --- from the dictionaries alone ------------------------------------------------------------
def check_feature(reader, hook: str, feature: int) -> None:
    if hook not in reader.dicts:
        raise LookupError(f"no dictionary {hook!r} in this atlas; it has: {', '.join(reader.hooks)}")
    d_sae = reader.dicts[hook].d_sae
    if not 0 <= feature < d_sae:
        raise LookupError(f"feature {feature} is out of range for {hook} (0..{d_sae - 1})")


@torch.no_grad()
def logit_effects(reader, hook: str, feature: int, k: int = 10) -> dict:
    """Top promoted / suppressed output tokens of a feature: decoder row @ unembedding.

    The direct path only (ignores the final norm's scale and later layers), as SAEDashboard's
    "logit effects". For a transcoder the decoder row lives in mlp_out, also the residual space.
    """
    d = reader.dicts[hook]
    W_U = reader.lm.model.get_output_embeddings().weight  # [vocab, d_model]
    row = d.W_dec[feature].to(W_U.dtype)  # [d_model]
    if row.shape[0] != W_U.shape[1]:
        return {"promoted": [], "suppressed": [], "histogram": None}
    eff = (W_U @ row).float()  # [vocab]
    n = min(k, eff.numel())
    up, down = eff.topk(n), (-eff).topk(n)
    tok = reader.lm.to_str_tokens
    return {
        "promoted": [{"token": t, "value": float(v)} for t, v in zip(tok(up.indices), up.values)],
        "suppressed": [{"token": t, "value": -float(v)} for t, v in zip(tok(down.indices), down.values)],
        "histogram": _histogram(eff, 30),
    }


def _histogram(x: torch.Tensor, bins: int) -> dict:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts = torch.histc(x.float(), bins=bins, min=lo, max=hi)
    return {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]}


def dictionary_density(reader, hook: str) -> torch.Tensor | None:
    """Firing frequency per feature [d_sae] from SAELens' sparsity file (log10 freq), if saved."""
    if reader.atlas is None:
        return None
    from ..layout import AtlasLayout

    path = Path(AtlasLayout(reader.atlas).dictionary_dir(hook)) / "sparsity.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        return (10 ** load_file(str(path))["sparsity"].float()).clamp(max=1.0)
    except Exception:
        return None


def feature_profile(reader, hook: str, feature: int) -> dict:
    """Everything the feature page shows, JSON-ready. LookupError for an unknown feature."""
    check_feature(reader, hook, feature)
    label = reader.label(hook, feature)
    out = {"id": f"{hook}/{feature}", "hook": hook, "feature": feature, "label": label,
           "display": label or f"{hook}/{feature} (unlabeled)", "profile": None, "explanations": [],
           "density": None, "logits": logit_effects(reader, hook, feature)}
    dens = dictionary_density(reader, hook)
    if dens is not None:
        out["density"] = float(dens[feature])
    db = reader.db
    if db is not None:
        prof = to_jsonable(db.profile(hook, feature))
        if isinstance(prof, dict):
            prof["histogram"] = dense_histogram(prof.get("histogram"))
            _bucket_ranges(prof.get("quantiles") or [])
            out["explanations"] = prof.pop("explanations", None) or []
            if prof.get("promoted"):  # the atlas build's logit effects (same formula, stored)
                out["logits"]["promoted"] = prof.pop("promoted")
                out["logits"]["suppressed"] = prof.pop("suppressed", [])
            out["profile"] = prof
            if prof.get("density") is not None:
                out["density"] = prof["density"]
        else:
            out["explanations"] = to_jsonable(db.explanations(hook, feature)) or []
    return out


def _bucket_ranges(samples: list[dict]) -> None:
    """Add each quantile sample's activation interval (the atlas's reservoir buckets)."""
    try:
        from ..atlas.profile import bucket_range
    except ImportError:
        return
    for ex in samples:
        if isinstance(ex, dict) and isinstance(ex.get("bucket"), int):
            lo, hi = bucket_range(ex["bucket"])
            ex["range"] = [lo if math.isfinite(lo) else 0.0, hi if math.isfinite(hi) else None]


def dense_histogram(hist: dict | None) -> dict | None:
    """The atlas's sparse log2 histogram {log2_lo, per_octave, bins, counts} -> dense
    {counts, edges, lo, hi} from the first to the last nonempty bin (edges = activation values)."""
    if not isinstance(hist, dict):
        return None
    if "bins" not in hist:
        return hist if hist.get("counts") else None
    if not hist["bins"]:
        return None
    lo, per = hist["log2_lo"], hist["per_octave"]
    counts = dict(zip(hist["bins"], hist["counts"]))
    first, last = min(counts), max(counts)
    edges = [2.0 ** (lo + b / per) for b in range(first, last + 2)]
    return {"counts": [counts.get(b, 0) for b in range(first, last + 1)], "edges": edges,
            "lo": edges[0], "hi": edges[-1], "log_scale": True}


def search_text(reader, text: str, *, limit: int = 20) -> list[dict]:
    """Features that fire most on `text`: max activation over its tokens, via the reading engine.

    Uses the atlas DB's own search when it has one (it may rank by more than one prompt);
    otherwise the one encode path of `Reader`.
    """
    if reader.db is not None:
        hits = to_jsonable(reader.db.search_text(text, limit))
        if isinstance(hits, list):
            return hits
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
            rows.append({"id": f"{hook}/{i}", "hook": hook, "feature": i, "act": v, "label": label,
                         "token": strs[start + int(where[i])]})
    rows.sort(key=lambda r: -r["act"])
    return rows[:limit]


def search_labels(reader, query: str, *, limit: int = 20) -> list[dict]:
    """Features whose explanation matches `query` (the atlas DB's full-text search)."""
    if not query.strip():
        raise UserError("the search query is empty")
    if reader.db is None:
        return []
    hits = to_jsonable(reader.db.search_labels(query, limit))
    if not isinstance(hits, list):
        return []
    out, seen = [], set()
    for h in hits:  # one row per feature (a label and its explanation may both match)
        key = (h.get("hook"), h.get("feature"))
        if key in seen or key[0] not in reader.dicts:
            continue
        seen.add(key)
        out.append({**h, "id": f"{key[0]}/{key[1]}", "label": reader.label(*key), "match": h.get("text"),
                    "score": -h["rank"] if isinstance(h.get("rank"), (int, float)) else None})
    return out


def overview(reader) -> dict:
    """The atlas overview: dictionaries with their shape, density and label/score summaries."""
    dicts = []
    for hook in reader.hooks:
        d = reader.dicts[hook]
        cfg = d.cfg
        entry = {"hook": hook, "arch": cfg.arch, "d_in": d.d_in, "d_sae": d.d_sae,
                 "k": cfg.k if cfg.arch in ("topk", "batchtopk") else None, "transcoder": bool(getattr(cfg, "is_transcoder", False)),
                 "density_histogram": None, "dead": None}
        dens = dictionary_density(reader, hook)
        if reader.db is not None:  # the atlas build's densities are measured on more text
            rows = reader.db.densities(hook)
            if rows:
                dens = torch.tensor([r[1] or 0.0 for r in rows])
        if dens is not None:
            logd = dens.clamp(min=1e-10).log10()
            entry["density_histogram"] = _histogram(logd, 20)
            entry["dead"] = int((dens <= 1e-9).sum())
        dicts.append(entry)
    summary, scores = None, []
    if reader.db is not None:
        summary = to_jsonable(reader.db.summary())
        if isinstance(summary, dict):
            summary = {k: v for k, v in summary.items() if k in ("n_features", "n_explanations")}
        groups: dict[str, list[float]] = {}
        for scorer, metric, value in reader.db.score_values() or []:
            groups.setdefault(f"{scorer} {metric}", []).append(float(value))
        for name, vals in sorted(groups.items()):
            t = torch.tensor(vals)
            scores.append({"name": name, "n": len(vals), "mean": float(t.mean()),
                           "histogram": _histogram(t, 10)})
    return {"model": reader.lm.name, "atlas": reader.atlas.name if reader.atlas else None,
            "dictionaries": dicts, "db": summary, "scores": scores, "has_db": reader.db is not None}

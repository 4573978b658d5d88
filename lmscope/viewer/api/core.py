"""The viewer's core API: scan, compare, feature profile, search, atlas overview.

All of it calls the one reading engine (lmscope.read); nothing here decides which features fire.
"""

from __future__ import annotations

from ...dictionaries.feature_id import parse_feature_id
from ...errors import UserError
from ...read import compare, profiles
from ..routes import ApiError, Request, route


@route("GET", "/api/info")
def info(req: Request) -> dict:
    r = req.reader
    lim = req.limits
    return {
        "model": r.lm.name,
        "hooks": r.hooks,
        "max_tokens": r.max_tokens,
        "n_layers": r.lm.n_layers,
        "has_db": r.db is not None,
        "atlas": r.atlas.name if r.atlas else None,
        "max_generate": lim.max_generate,
        "max_interventions": lim.max_interventions,
    }


@route("POST", "/api/scan", runs_model=True)
def scan(req: Request) -> dict:
    prompt = req.text("prompt")
    top_k = req.int("top_k", 5, 1, 50)
    return req.reader.scan(prompt, top_k=top_k).to_dict()


@route("POST", "/api/compare", runs_model=True)
def compare_prompts(req: Request) -> dict:
    a, b = req.text("prompt_a"), req.text("prompt_b")
    return compare(req.reader, a, b, top=req.int("top", 20, 1, 100)).to_dict()


@route("GET", "/api/feature")
def feature(req: Request) -> dict:
    fid = req.text("id", max_chars=300)
    try:
        hook, idx = parse_feature_id(fid)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    try:
        return profiles.feature_profile(req.reader, hook, idx).to_dict()
    except LookupError as e:
        raise ApiError(404, str(e.args[0]) if e.args else "unknown feature") from None


@route("GET", "/api/search", runs_model=lambda req: req.get("mode", "labels") == "text")
def search(req: Request) -> dict:
    q = req.text("q", max_chars=2000)
    mode = req.get("mode", "labels")
    limit = req.int("limit", 20, 1, 200)
    if mode == "labels":
        hits = profiles.search_labels(req.reader, q, limit=limit)
        note = (
            None
            if req.reader.db is not None
            else "no atlas DB yet: labels appear after `lmscope explain`"
        )
    elif mode == "text":
        hits, note = profiles.search_text(req.reader, q, limit=limit), None
    else:
        raise ApiError(400, f"mode must be 'labels' or 'text', got {mode!r}")
    return {"query": q, "mode": mode, "results": hits, "note": note}


@route("GET", "/api/overview")
def overview(req: Request) -> dict:
    return profiles.overview(req.reader)

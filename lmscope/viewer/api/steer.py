"""The steer page's API: generate with and without interventions, side by side.

    POST /api/steer {prompt, features: ["HOOK/INDEX=+8", ...],
                     vector: {positive, negative, layer, coeff?, mode?, site?} | null,
                     generate?, temperature?, seed?, targets?: [" Paris", ...]}
      -> Comparison.to_dict(): {prompt, unsteered, steered, interventions, targets, next_tokens,
      vector}

The same `lmscope.steer.steer` as `lmscope steer`; this file only checks and bounds the request.
"""

from __future__ import annotations

from ...dictionaries.feature_id import parse_feature_id
from ...steer import VectorSpec, steer
from ..routes import ApiError, Request, model_lock, route


def _vector(req: Request) -> VectorSpec | None:
    v = req.get("vector")
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ApiError(400, "field 'vector' must be an object {positive, negative, layer, coeff}")
    sub = Request(reader=req.reader, query={}, body=v, limits=req.limits)
    pos, neg = sub.text("positive", max_chars=500), sub.text("negative", max_chars=500)
    for text in (pos, neg):
        if not text.strip():
            raise ApiError(400, "both prompts of the steering vector must be non-empty")
        req.reader.tokenize(text)  # UserError (400) past --max-tokens
    n_layers = req.reader.lm.n_layers
    layer = sub.int("layer", -1, 0, n_layers - 1) if "layer" in v else None
    if layer is None:
        raise ApiError(400, f"field 'vector' needs 'layer' (0..{n_layers - 1})")
    coeff = sub.float("coeff", 5.0, -1e4, 1e4)
    mode, site = sub.get("mode", "actadd"), sub.get("site", "resid_pre")
    if mode not in ("actadd", "mean"):
        raise ApiError(400, f"vector mode must be 'actadd' or 'mean', got {str(mode)[:40]!r}")
    if site not in ("resid_pre", "resid_post"):
        raise ApiError(
            400, f"vector site must be 'resid_pre' or 'resid_post', got {str(site)[:40]!r}"
        )
    return VectorSpec(pos, neg, layer, coeff, mode, site)


@route("POST", "/api/steer", runs_model=True)
def steer_prompt(req: Request) -> dict:
    limits, reader = req.limits, req.reader
    prompt = req.text("prompt")
    reader.tokenize(prompt)  # UserError (400) when empty or past --max-tokens
    features = [
        f
        for f in req.strings("features", max_items=limits.max_interventions, max_chars=300)
        if f.strip()
    ]
    targets = req.strings("targets", max_items=limits.max_interventions, max_chars=100)
    vector = _vector(req)
    n = req.int("generate", min(20, limits.max_generate), 0, limits.max_generate)
    temperature = req.float("temperature", 0.0, 0.0, 5.0)
    seed = req.int("seed", 0, 0, 2**31 - 1)
    if not features and vector is None:
        raise ApiError(
            400,
            "nothing to steer with: add a feature intervention (HOOK/INDEX=V) or a "
            "steering vector (positive and negative prompts)",
        )
    with model_lock(reader):
        res = steer(
            reader.lm,
            reader.dicts,
            prompt,
            features=features,
            vector=vector,
            max_new_tokens=n,
            temperature=temperature,
            seed=seed,
            targets=targets,
        )
    d = res.to_dict()
    ids = [spec.replace(" ", "").partition("=")[0] for spec in features]  # validated by steer()
    d["labels"] = {i: reader.label(*parse_feature_id(i)) for i in ids}
    return d

"""On VALIDATION windows of N seeded stats-labelled features: what the "output: no clear pattern"
phrase and the concept word cost or bring the default scorers (a design check, so validation only).

    python bench/labels_valid_variants.py ATLAS 600      # ATLAS explained by `lmscope explain`
"""

import json
import random
import sys
from pathlib import Path

import numpy as np

from lmscope.atlas.db import AtlasDB
from lmscope.explain import baselines
from lmscope.explain.runner import ExplainConfig, Scoring, _token_embeddings, split_config
from lmscope.explain.split import split_examples
from lmscope.explain.stats_explainer import NO_OUTPUT, compose
from lmscope.layout import AtlasLayout

atlas, n = sys.argv[1], int(sys.argv[2])
db = AtlasDB(Path(atlas) / "atlas.db", readonly=True)
rows = db._q(
    "SELECT d.hook, e.idx, e.text, e.details FROM explanations e JOIN dictionaries d "
    "ON d.id = e.dictionary WHERE e.method = 'stats'"
)
rows = random.Random(0).sample(rows, n)
scfg = split_config(db)
te, *_ = _token_embeddings(db, AtlasLayout(atlas), [(h, i) for h, i, _, _ in rows], scfg)
sc = Scoring(["direct", "embedding", "simulation"], None, ExplainConfig(atlas=atlas), te)
res = {k: [] for k in ("label", "no_marker", "no_concept", "baseline")}
for h, i, text, det in rows:
    d = json.loads(det)
    sp = split_examples(db.feature(h, i), scfg)
    b = baselines.top_token_label(sp, d.get("says"))
    if not sp.valid.pos or not sp.valid.neg or b is None:
        continue
    toks = d["tokens"]
    variants = {
        "label": (text, toks),
        "no_marker": (text.replace(" | " + NO_OUTPUT, "").replace(NO_OUTPUT, ""), toks),
        "no_concept": (compose(toks, None, d.get("context"), d.get("says") or [], False), toks),
        "baseline": b,
    }
    hv = sc.vectors(sp.valid)
    sc.prepare(list(variants.values()))
    for k, (t, tk) in variants.items():
        res[k].append({x.scorer: x.value for x in sc.score(t, tk, sp.valid, hv)})
for s in ("direct", "embedding", "simulation"):
    base = np.array([r[s] for r in res["label"]])
    line = [s]
    for k in res:
        v = np.array([r[s] for r in res[k]])
        ok = ~np.isnan(v) & ~np.isnan(base)
        line.append(f"{k} {np.nanmean(v):.4f} (d {np.mean(v[ok] - base[ok]):+.4f})")
    print(" | ".join(line), "n", len(base))

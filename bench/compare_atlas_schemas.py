"""Same content before and after atlas schema 2: a schema-1 atlas.db (built by main before issue 20)
against a schema-2 atlas.db built with the same flags on the same tokens.

    .venv/bin/python bench/compare_atlas_schemas.py BEFORE/atlas.db AFTER/atlas.db

Per (dictionary, feature, kind): the global token ids and scores of the examples must be equal as
sets, and each example's window tokens and peak position equal; reported: how many sets agree and
the largest relative difference of the window activations (float16 storage; denominators floored
at 1e-3). The figures in docs/benchmarks.md ("Whole-model atlas") came from this script.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(before: str, after: str) -> dict:
    from lmscope.atlas.db import AtlasDB

    b = sqlite3.connect(before)
    hooks = {h: i for i, h in b.execute("SELECT id, hook FROM dictionaries")}
    sizes = dict(b.execute("SELECT hook, d_sae FROM dictionaries"))
    old: dict = {}
    for did, idx, kind, tid, score, toks, acts, pos in b.execute(
        "SELECT dictionary, idx, kind, token_id, score, tokens, acts, position FROM examples"
    ):
        old.setdefault((did, idx, kind), []).append((tid, score, toks, acts, pos))
    n = same_ids = same_win = 0
    maxrel = 0.0
    n_ex = {"top": 0, "quantile": 0, "negative": 0}
    with AtlasDB(after, readonly=True) as a:
        for h, did in hooks.items():
            ex = a._examples(a._dict_id(h), list(range(sizes[h])), with_ids=False)
            for idx, kinds in ex.items():
                for kind, es in kinds.items():
                    o = old.get((did, idx, kind), [])
                    n += 1
                    n_ex[kind] += len(es)
                    same_ids += sorted((e.token_index, e.score) for e in es) == sorted(
                        (t, s) for t, s, *_ in o
                    )
                    om = {t: (json.loads(tk), json.loads(ac), p) for t, _, tk, ac, p in o}
                    ok = True
                    for e in es:
                        t, ac, p = om.get(e.token_index, (None, None, None))
                        if t != e.tokens or p != e.position:
                            ok = False
                            continue
                        d = np.abs(np.array(ac) - np.array(e.acts))
                        if len(d):
                            maxrel = max(maxrel, float((d / np.maximum(np.abs(ac), 1e-3)).max()))
                    same_win += ok
    res = {
        "feature_kinds": n,
        "same_examples": same_ids,
        "same_windows": same_win,
        "max_rel_act_diff": maxrel,
        "examples": n_ex,
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

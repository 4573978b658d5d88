"""Which rule picks a stats label's token list best? Mean token-level balanced accuracy of each
rule's
list on the VALIDATION windows of every feature (a design check, so validation only).

    python bench/labels_token_rules.py ATLAS
"""

import sys
from pathlib import Path

import numpy as np

from lmscope.atlas.db import AtlasDB
from lmscope.explain.concepts import bal_acc, predict
from lmscope.explain.runner import split_config
from lmscope.explain.split import split_examples
from lmscope.explain.stats_explainer import token_candidates

db = AtlasDB(Path(sys.argv[1]) / "atlas.db", readonly=True)
scfg = split_config(db)
res: dict[str, list[float]] = {}
for d in db.dictionaries():
    for i, _, mx in db.densities(d.hook):
        if not (mx or 0) > 0:
            continue
        sp = split_examples(db.feature(d.hook, i), scfg)
        v = sp.valid.pos + sp.valid.neg
        sc = {
            r: bal_acc(*predict(v, set(t), None, None, None))
            for r, t in token_candidates(sp).items()
        }
        if all(x is not None for x in sc.values()):
            for r, x in sc.items():
                res.setdefault(r, []).append(x)
for r, x in res.items():
    print(f"{r:<10} n {len(x)}  validation balanced accuracy {np.mean(x):.4f}")

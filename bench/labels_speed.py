"""CPU time per feature of the stats labeller on a seeded sample (3 passes: the first fills the
word caches).

    PYTHONPATH=$PWD .venv/bin/python bench/labels_speed.py ATLAS/atlas.db 500 NAME

Run it with each version's code first on PYTHONPATH to compare labellers on the same features.
"""

from __future__ import annotations

import random
import sys
import time

from lmscope.atlas.db import AtlasDB
from lmscope.explain.runner import split_config
from lmscope.explain.split import split_examples
from lmscope.explain.stats_explainer import Labeller, explain_stats


def main() -> None:
    db = AtlasDB(sys.argv[1], readonly=True)
    n = int(sys.argv[2])
    hook = db.dictionaries()[0].hook
    idx = sorted(random.Random(1).sample(range(db.dictionaries()[0].d_sae), n))
    cfg = split_config(db)
    items = [(p, split_examples(p, cfg)) for p in db.feature_profiles(hook, list(idx))]
    t = time.time()
    lab = Labeller.for_atlas(db)
    explain_stats(*items[0], lab)
    setup = time.time() - t
    ts, out = [], []
    for _ in range(3):
        t = time.process_time()
        out = [explain_stats(p, sp, lab) for p, sp in items]
        ts.append(time.process_time() - t)
    print(
        sys.argv[3],
        f"setup+first {setup:.1f}s",
        "CPU ms/feature per pass:",
        [round(1000 * x / n, 2) for x in ts],
        "concepts kept",
        sum(e.concept is not None for e in out),
    )


if __name__ == "__main__":
    main()

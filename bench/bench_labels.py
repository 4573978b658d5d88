"""Speed of the stats labeller alone (concepts, contexts, validation choice, output coherence).

    python bench/bench_labels.py ATLAS [--features 2000] [--repeats 3]

Profiles and splits are read first (not timed: the runner reads them anyway); then the one-off setup
(WordNet index, MiniLM word-piece table, coherence null) and the per-feature labelling are timed
separately. Prints the median of the repeats; the first repeat starts with cold WordNet caches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    from lmscope.atlas.db import AtlasDB
    from lmscope.explain.runner import split_config
    from lmscope.explain.split import split_examples
    from lmscope.explain.stats_explainer import Labeller, explain_stats

    ap = argparse.ArgumentParser()
    ap.add_argument("atlas")
    ap.add_argument("--features", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with AtlasDB(Path(a.atlas) / "atlas.db", readonly=True) as db:
        scfg = split_config(db)
        feats = [
            (d.hook, i)
            for d in db.dictionaries()
            for i, _, mx in db.densities(d.hook)
            if (mx or 0) > 0
        ]
        feats = feats[: a.features]
        items = [(p, split_examples(p, scfg)) for p in (db.feature(h, i) for h, i in feats)]
        t = time.perf_counter()
        lab = Labeller.for_atlas(db)
        lab.coherence()
        setup = time.perf_counter() - t
    runs = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for p, sp in items:
            explain_stats(p, sp, lab)
        runs.append(time.perf_counter() - t)
    med = statistics.median(runs)
    print(
        f"{len(items)} features: setup {setup:.1f}s once; labelling median {med:.2f}s over "
        f"{a.repeats} runs "
        f"({', '.join(f'{r:.2f}' for r in runs)}) = {len(items) / med:.0f} features/s, "
        f"{1000 * med / len(items):.2f} ms/feature"
    )


if __name__ == "__main__":
    main()

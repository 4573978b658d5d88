"""How many held-out windows each feature's TEST part gets (the windows every reported score
judges).

    PYTHONPATH=$PWD .venv/bin/python bench/held_out_counts.py ATLAS [--samples S] [--negatives M]

For every profiled feature: the split of explain/split.py (whole contexts to one part), then the
number of activating and non-activating windows in its test part (and valid part). Prints the
median, 10th percentile and the share of features with >= 20 of each, as JSON.

`--samples S` / `--negatives M` simulate an atlas built with fewer quantile samples per octave
bucket
or fewer negatives than ATLAS has: both are bottom-k samples by a fixed hash key (atlas/profile.py),
so the S smallest keys of a bucket (its first S ranks) are exactly what a build with --samples S
keeps; one large build answers every smaller setting without another model pass.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from lmscope.atlas.db import AtlasDB
from lmscope.explain.runner import split_config
from lmscope.explain.split import split_examples


def subset(p, samples: int | None, negatives: int | None):
    """The profile an atlas built with --samples/--negatives this small would hold (ranks ascend by
    key)."""
    if samples is not None:
        per: Counter = Counter()
        keep = []
        for e in p.quantiles:  # ordered by bucket, then rank
            if per[e.bucket] < samples:
                keep.append(e)
            per[e.bucket] += 1
        p.quantiles = keep
    if negatives is not None:
        p.negatives = p.negatives[:negatives]
    return p


def summary(x: list[int]) -> dict:
    a = np.array(x)
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "mean": round(float(a.mean()), 2),
        "ge20": round(float((a >= 20).mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("atlas")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--negatives", type=int, default=None)
    a = ap.parse_args()
    db = AtlasDB(f"{a.atlas}/atlas.db" if not a.atlas.endswith(".db") else a.atlas, readonly=True)
    cfg = split_config(db)
    parts: dict[str, list[int]] = {
        k: [] for k in ("shown", "valid_pos", "valid_neg", "test_pos", "test_neg")
    }
    both = 0
    for d in db.dictionaries():
        idx = [i for i, _, mx in db.densities(d.hook) if (mx or 0) > 0]
        for b in range(0, len(idx), 512):
            for p in db.feature_profiles(d.hook, list(idx[b : b + 512])):
                sp = split_examples(subset(p, a.samples, a.negatives), cfg)
                for k, v in (
                    ("shown", sp.shown),
                    ("valid_pos", sp.valid.pos),
                    ("valid_neg", sp.valid.neg),
                    ("test_pos", sp.test.pos),
                    ("test_neg", sp.test.neg),
                ):
                    parts[k].append(len(v))
                both += len(sp.test.pos) >= 20 and len(sp.test.neg) >= 20
    n = len(parts["shown"])
    print(
        json.dumps(
            {
                "atlas": a.atlas,
                "samples": a.samples,
                "negatives": a.negatives,
                "features": n,
                "test_both_ge20": round(both / max(n, 1), 4),
                **{k: summary(v) for k, v in parts.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

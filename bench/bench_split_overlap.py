"""How much held-out text lies inside a shown window: the old alternate deal vs the grouped split.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_split_overlap.py ATLAS

For every profiled feature: the old split (activating windows pooled, even ones shown, odd ones held
out) and the new one (split.py: whole contexts / overlapping spans to one part). Prints the share of
held-out activating windows that meet a shown window and of their tokens inside one, and the mean
windows per part.
"""

from __future__ import annotations

import json
import sys

from lmscope.atlas.db import AtlasDB
from lmscope.explain.runner import split_config
from lmscope.explain.split import Held, Split, span, split_examples


def old_split(p) -> Split:
    seen, pool = set(), []
    for e in list(p.top) + list(p.quantiles):
        key = e.token_index if e.token_index is not None else (tuple(e.tokens), e.position)
        if key in seen or e.score <= 0:
            continue
        seen.add(key)
        pool.append(e)
    return Split(pool[0::2], Held(), Held(pool[1::2], list(p.negatives)))


def overlap(sp: Split) -> tuple[int, int, int, int]:
    shown = set()
    for e in sp.shown:
        shown.update(range(*span(e)))
    win_hit = tok_hit = toks = 0
    held = sp.valid.pos + sp.test.pos
    for e in held:
        ids = range(*span(e))
        h = sum(t in shown for t in ids)
        win_hit += h > 0
        tok_hit += h
        toks += len(ids)
    return win_hit, len(held), tok_hit, toks


def main() -> None:
    atlas = sys.argv[1]
    db = AtlasDB(f"{atlas}/atlas.db", readonly=True)
    cfg = split_config(db)
    tot = {"old": [0, 0, 0, 0], "new": [0, 0, 0, 0]}
    parts = {"shown": 0, "valid_pos": 0, "valid_neg": 0, "test_pos": 0, "test_neg": 0}
    n = 0
    for d in db.dictionaries():
        idxs = [i for i, _, mx in db.densities(d.hook) if (mx or 0) > 0]
        for b in range(0, len(idxs), 512):
            for p in db.feature_profiles(d.hook, idxs[b : b + 512]):
                n += 1
                new = split_examples(p, cfg)
                for k, sp in (("old", old_split(p)), ("new", new)):
                    tot[k] = [a + b for a, b in zip(tot[k], overlap(sp))]
                for k, v in (
                    ("shown", new.shown),
                    ("valid_pos", new.valid.pos),
                    ("valid_neg", new.valid.neg),
                    ("test_pos", new.test.pos),
                    ("test_neg", new.test.neg),
                ):
                    parts[k] += len(v)
    out = {"atlas": atlas, "features": n, "ctx_len": cfg.ctx_len}
    for k, (wh, w, th, t) in tot.items():
        out[k] = {
            "held_windows": w,
            "windows_meeting_shown": round(wh / max(w, 1), 4),
            "tokens_inside_shown": round(th / max(t, 1), 4),
        }
    out["mean_per_feature"] = {k: round(v / max(n, 1), 2) for k, v in parts.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

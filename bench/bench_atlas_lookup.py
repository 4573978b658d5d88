"""Lookup latency on a built atlas: feature page, label search, scan's label and density reads.

    .venv/bin/python bench/bench_atlas_lookup.py ATLAS [--n 200] [--seed 0] [--out results.json]

ATLAS is a folder with a built atlas.db (issue 20: the whole-model atlas, 30 transcoders x
2,304 = 69,120 features). The DB is COPIED to a temporary folder first (the original is never
written) and, where its features have no labels yet, every feature gets a three-word label
drawn from a fixed word list, so the full-text search runs over as many rows as a labelled
atlas has. Per call kind, `--n` calls on features drawn uniformly (seeded) over all
dictionaries, on one read-only connection opened beforehand (the viewer keeps one open);
reported: median (p50), p90 and max in ms, plus the open time and the FIRST feature page (it
reads the vocabulary and contexts once per connection).

- feature_page: `feature_page.from_db` (stats, histogram, top / quantile / negative examples
  with their windows, logit effects, explanations): the viewer's and `lmscope feature`'s read;
- label: `AtlasDB.label` (what `scan` asks per shown feature);
- densities: `AtlasDB.densities` of one whole dictionary (2,304 rows; text search and scan
  overviews);
- search: `AtlasDB.search_labels` (FTS5, bm25, limit 20) for single words of the label list.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WORDS = (
    "horse water river city number date name code function list string error music color "
    "food game money time year month week day night light dark sound word letter plural verb "
    "noun article question answer start end open close begin finish left right up down"
).split()


def _ms(xs: list[float]) -> dict:
    xs = sorted(x * 1000 for x in xs)
    return {
        "p50_ms": round(statistics.median(xs), 2),
        "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 2),
        "max_ms": round(xs[-1], 2),
        "n": len(xs),
    }


def _timed(fn, args_list) -> list[float]:
    out = []
    for a in args_list:
        t = time.perf_counter()
        fn(*a)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlas")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    from lmscope.atlas.db import AtlasDB
    from lmscope.atlas.feature_page import from_db

    src = Path(a.atlas) / "atlas.db"
    rnd = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.db"
        shutil.copy(src, path)
        db = AtlasDB(path)
        labelled = db._q("SELECT COUNT(*) FROM features WHERE label IS NOT NULL")[0][0]
        if not labelled:
            rows = db._q(
                "SELECT d.hook, f.dictionary, f.idx FROM features f "
                "JOIN dictionaries d ON d.id = f.dictionary"
            )
            with db.conn:
                lab = [(" ".join(rnd.sample(WORDS, 3)), did, i) for _, did, i in rows]
                db.conn.executemany(
                    "UPDATE features SET label = ? WHERE dictionary = ? AND idx = ?", lab
                )
                db.conn.executemany(
                    "INSERT INTO search VALUES (?, ?, ?, 'label', NULL)",
                    [(t, h, i) for (h, _, i), (t, _, _) in zip(rows, lab)],
                )
        db.close()
        size_mb = src.stat().st_size / 1e6
        t = time.perf_counter()
        db = AtlasDB(path, readonly=True)
        t_open = time.perf_counter() - t
        dicts = [(d.hook, d.d_sae) for d in db.dictionaries()]
        n_feat = sum(n for _, n in dicts)
        picks = []
        for _ in range(a.n):
            h, n = rnd.choice(dicts)
            picks.append((h, rnd.randrange(n)))
        t = time.perf_counter()
        from_db(db, *picks[0])
        t_first = time.perf_counter() - t
        res = {
            "atlas": str(Path(a.atlas).resolve()),
            "db_mb": round(size_mb, 1),
            "dictionaries": len(dicts),
            "features": n_feat,
            "labels_added": not labelled,
            "open_ms": round(t_open * 1000, 1),
            "first_feature_page_ms": round(t_first * 1000, 1),
            "feature_page": _ms(_timed(lambda h, i: from_db(db, h, i), picks)),
            "label": _ms(_timed(db.label, picks)),
            "densities": _ms(_timed(db.densities, [(rnd.choice(dicts)[0],) for _ in range(50)])),
            "search": _ms(_timed(db.search_labels, [(rnd.choice(WORDS),) for _ in range(a.n)])),
        }
        db.close()
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()

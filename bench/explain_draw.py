"""Seeded random features of an explained atlas: the top-token label (the equal-budget baseline,
what a labeller naming the highest-activation tokens gives) next to the stats label.

    PYTHONPATH=$PWD .venv/bin/python bench/explain_draw.py runs/smollm2-135m/atlas --n 20 --seed 0

Draws with random.Random(seed).sample over every feature that fired (max_act > 0), sorted by
(layer order of the dictionaries, index), and prints a markdown table (docs/explain.md). Read only.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("atlas", help="an explained atlas folder")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    db = sqlite3.connect(f"file:{Path(a.atlas) / 'atlas.db'}?mode=ro", uri=True)
    feats = db.execute(
        "SELECT d.id, d.hook, f.idx FROM features f JOIN dictionaries d ON d.id = f.dictionary "
        "WHERE f.max_act > 0 ORDER BY d.id, f.idx"
    ).fetchall()
    pick = sorted(random.Random(a.seed).sample(feats, a.n))
    print(f"{len(feats)} features fired; {a.n} drawn with random.Random({a.seed}).sample\n")
    print("| feature | top-token label (before) | stats label (after) |")
    print("|---|---|---|")
    for did, hook, idx in pick:
        text = dict(
            db.execute(
                "SELECT method, text FROM explanations WHERE dictionary = ? AND idx = ?",
                (did, idx),
            ).fetchall()
        )
        before = text.get("baseline-toptoken", "(nothing fired in the shown windows)")
        after = text.get("stats", "(not explained)")
        print(f"| {hook}/{idx} | `{before}` | `{after}` |".replace("|`", "| `"))


if __name__ == "__main__":
    main()

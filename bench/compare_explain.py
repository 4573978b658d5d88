"""Are two `lmscope explain` runs' results the same? Compares labels, explanations (text and
details)
and every score of two atlas databases explained from the same atlas with the same seed.

    PYTHONPATH=$PWD .venv/bin/python bench/compare_explain.py BEFORE/atlas.db AFTER/atlas.db [--tol
    1e-6] [--ignore-version] [--paired]

Texts, details, labels and the counts of every score must be equal; score values equal within
--tol (absolute); prints one JSON line (max difference per scorer, values beyond --tol) and exits 1
when anything differs beyond it. Used to check that the speed work of issue 21 changed no result.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections import defaultdict


def rows(path: str, ignore_version: bool = False) -> tuple[dict, dict]:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    expl = {}
    ids = {}
    for eid, hook, idx, m, v, text, det in c.execute(
        "SELECT e.id, d.hook, e.idx, e.method, e.version, e.text, e.details FROM explanations e "
        "JOIN dictionaries d ON d.id = e.dictionary"
    ):
        key = (hook, idx, m) if ignore_version else (hook, idx, m, v)
        expl[key] = (text, json.loads(det) if det else None)
        ids[eid] = key
    scores: dict = {}
    for eid, scorer, metric, value, n_pos, n_neg, det in c.execute(
        "SELECT explanation_id, scorer, metric, value, n_pos, n_neg, details FROM scores"
    ):
        scores[(*ids[eid], scorer)] = (
            metric,
            value,
            n_pos,
            n_neg,
            json.loads(det) if det else None,
        )
    labels = {
        (h, i): lab
        for h, i, lab in c.execute(
            "SELECT d.hook, f.idx, f.label FROM features f JOIN dictionaries d ON d.id = "
            "f.dictionary"
        )
    }
    c.close()
    return expl, scores, labels


def paired(sa: dict, sb: dict) -> dict:
    """Per method and scorer: after - before per feature, mean with a 95% bootstrap interval over
    features (report.paired_bootstrap), mean and max |difference|, n."""
    from lmscope.explain.report import paired_bootstrap

    diffs: dict = defaultdict(list)
    for k in set(sa) & set(sb):
        va, vb = sa[k][1], sb[k][1]
        if va is None or vb is None or math.isnan(va) or math.isnan(vb):
            continue
        diffs[f"{k[2]}/{k[-1]}"].append(vb - va)
    out = {}
    for key, d in sorted(diffs.items()):
        mean, lo, hi = paired_bootstrap(d)
        out[key] = {
            "n": len(d),
            "mean": round(mean, 5),
            "ci95": [round(lo, 5), round(hi, 5)],
            "mean_abs": round(sum(map(abs, d)) / len(d), 5),
            "max_abs": round(max(map(abs, d)), 5),
        }
    return out


def compare(
    a: str, b: str, tol: float, ignore_version: bool = False, with_paired: bool = False
) -> dict:
    ea, sa, la = rows(a, ignore_version)
    eb, sb, lb = rows(b, ignore_version)
    out = {
        "explanations": len(ea),
        "scores": len(sa),
        "features": len(la),
        "explanations_differ": sum(ea.get(k) != eb.get(k) for k in set(ea) | set(eb)),
        "labels_differ": sum(la.get(k) != lb.get(k) for k in set(la) | set(lb)),
        "score_keys_differ": len(set(sa) ^ set(sb)),
    }
    maxd: dict = defaultdict(float)
    beyond: dict = defaultdict(int)
    other = 0
    for k in set(sa) & set(sb):
        (ma, va, pa, na, da), (mb, vb, pb, nb, db) = sa[k], sb[k]
        if (ma, pa, na, da) != (mb, pb, nb, db):
            other += 1
        if va is None or vb is None or (math.isnan(va) and math.isnan(vb)):
            if (va is None) != (vb is None) or (
                va is not None and math.isnan(va) != math.isnan(vb)
            ):
                beyond[k[-1]] += 1
            continue
        d = abs(va - vb) if not (math.isnan(va) or math.isnan(vb)) else math.inf
        maxd[k[-1]] = max(maxd[k[-1]], d)
        beyond[k[-1]] += d > tol
    out.update(
        {
            "score_meta_differ": other,
            "max_abs_diff": dict(maxd),
            "beyond_tol": dict(beyond),
            "tol": tol,
            "identical_within_tol": not (
                out["explanations_differ"]
                or out["labels_differ"]
                or out["score_keys_differ"]
                or other
                or any(beyond.values())
            ),
        }
    )
    if with_paired:
        out["paired_after_minus_before"] = paired(sa, sb)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument(
        "--ignore-version",
        action="store_true",
        help="match explanations by (feature, method) whatever their version",
    )
    ap.add_argument(
        "--paired",
        action="store_true",
        help="also the paired score difference after - before per method and scorer, with a 95%% "
        "bootstrap interval over features",
    )
    a = ap.parse_args()
    r = compare(a.before, a.after, a.tol, a.ignore_version, a.paired)
    print(json.dumps(r))
    sys.exit(0 if r["identical_within_tol"] else 1)


if __name__ == "__main__":
    main()

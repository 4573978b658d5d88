"""How the stats labels score on TEST windows, per feature class, and what their reading aids add.

    python -m lmscope.explain.label_report ATLAS                       # per-class table
    python -m lmscope.explain.label_report ATLAS --before OLD_ATLAS --draw 20 --seed 0   # +
    before/after

Per feature class (stats_explainer: single token, token family, context pattern, position/format):
1. the scores `lmscope explain` stored (test windows) for the stats label and for the equal-budget
   top-token baseline of the same feature, with the paired per-feature difference and its bootstrap
   95% interval (2,000 resamples of features, seeded);
2. the label as a predicate (tokens + the concept and context kept on validation) against the token
   list alone, token-level balanced accuracy on the TEST windows (the direct scorer's unit): what
   the concept and context words buy out of sample. Only features where validation kept a concept
   or context differ; the table gives their number.
The before/after draw: a seeded random sample of features explained in both atlases (not picked).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import concepts
from .split import split_examples

CLASSES = ("single token", "token family", "context pattern", "position/format")


def paired_ci(d: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): mean paired difference and its 95% percentile bootstrap interval."""
    a = np.asarray(d, dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)  # [n_boot]
    return float(a.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _stats_rows(db) -> dict:
    """(hook, idx) -> {"text", "details", "scores": {scorer: value}, "base": {scorer: value}}"""
    out: dict = {}
    rows = db._q(
        "SELECT d.hook, e.idx, e.id, e.method, e.version, e.text, e.details FROM explanations e "
        "JOIN dictionaries d ON d.id = e.dictionary WHERE e.method IN ('stats', "
        "'baseline-toptoken')"
    )
    scores = defaultdict(dict)
    for eid, scorer, value in db._q("SELECT explanation_id, scorer, value FROM scores"):
        scores[eid][scorer] = value
    for hook, idx, eid, method, version, text, details in rows:
        d = json.loads(details) if details else {}
        r = out.setdefault((hook, idx), {"base": {}})
        if method == "stats":
            r.update(text=text, details=d, version=version, scores=scores[eid])
        elif d.get("for", "stats") == "stats":
            r["base"] = scores[eid]
    return {k: v for k, v in out.items() if "text" in v}


def class_table(db, test_predicates: bool = True) -> list[dict]:
    from .wordnet import wordnet

    wn = wordnet()
    rows = _stats_rows(db)
    from .runner import split_config

    scfg = split_config(db)
    by = defaultdict(lambda: defaultdict(list))
    for (hook, idx), r in rows.items():
        d = r["details"]
        cls = d.get("class") or "?"
        for scorer, v in r["scores"].items():
            b = r["base"].get(scorer)
            if v == v and b is not None and b == b:  # NaN: no held-out windows for that scorer
                by[cls][f"{scorer}:label"].append(v)
                by[cls][f"{scorer}:diff"].append(v - b)
        by[cls]["n"].append(1)
        c = d.get("concept")
        if test_predicates and (c or d.get("context")):
            sp = split_examples(db.feature(hook, idx), scfg)
            held = sp.test.pos + sp.test.neg
            concept = concepts.Concept.from_dict(c) if c else None
            T = set(d.get("tokens") or [])
            full = concepts.bal_acc(*concepts.predict(held, T, concept, d.get("context"), wn))
            alone = concepts.bal_acc(*concepts.predict(held, T, None, None, wn))
            if full is not None and alone is not None:
                by[cls]["aid:diff"].append(full - alone)
                by[cls]["aid:concept"].append(1 if c else 0)
    out = []
    for cls in [*CLASSES, *sorted(set(by) - set(CLASSES))]:
        if cls not in by:
            continue
        g = by[cls]
        row = {"class": cls, "features": len(g["n"])}
        for key in sorted(k for k in g if k.endswith(":diff") and not k.startswith("aid")):
            s = key.split(":")[0]
            m, lo, hi = paired_ci(g[key])
            row[s] = {
                "n": len(g[key]),
                "label": round(float(np.mean(g[f"{s}:label"])), 4),
                "minus_baseline": round(m, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
        if g["aid:diff"]:
            m, lo, hi = paired_ci(g["aid:diff"])
            row["aids"] = {
                "n": len(g["aid:diff"]),
                "with_concept": int(sum(g["aid:concept"])),
                "minus_tokens_alone": round(m, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
        out.append(row)
    return out


def versus_stats(db, method: str = "llm") -> dict:
    """On the features explained by both `method` and stats: per scorer, the paired test-score
    difference method - stats with its bootstrap interval, and the LLM usage recorded per
    feature."""
    scores = defaultdict(dict)
    for eid, scorer, value in db._q("SELECT explanation_id, scorer, value FROM scores"):
        scores[eid][scorer] = value
    by = defaultdict(dict)
    for hook, idx, eid, m in db._q(
        "SELECT d.hook, e.idx, e.id, e.method FROM explanations e JOIN dictionaries d "
        "ON d.id = e.dictionary WHERE e.method IN ('stats', ?)",
        (method,),
    ):
        by[(hook, idx)][m] = scores[eid]
    pairs = [v for v in by.values() if "stats" in v and method in v]
    out = {"method": method, "features": len(pairs), "scorers": {}}
    for s in sorted({k for v in pairs for k in v[method]}):
        d = [
            v[method][s] - v["stats"][s]
            for v in pairs
            if s in v["stats"] and v[method][s] == v[method][s] and v["stats"][s] == v["stats"][s]
        ]
        m, lo, hi = paired_ci(d)
        out["scorers"][s] = {
            "n": len(d),
            "method": round(
                float(
                    np.mean([v[method][s] for v in pairs if v[method].get(s) == v[method].get(s)])
                ),
                4,
            ),
            "stats": round(
                float(
                    np.mean(
                        [
                            v["stats"][s]
                            for v in pairs
                            if s in v["stats"] and v["stats"][s] == v["stats"][s]
                        ]
                    )
                ),
                4,
            ),
            "minus_stats": round(m, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
        }
    return out


def format_table(rows: list[dict]) -> str:
    lines = [
        "class            features  scorer      n     label  label-baseline [95% CI]     aids: n  "
        "label-tokens alone [95% CI]"
    ]
    for r in rows:
        scorers = [k for k in r if isinstance(r[k], dict) and k != "aids"]
        aid = r.get("aids")
        atext = (
            (
                f"{aid['n']:>4} ({aid['with_concept']} concept) {aid['minus_tokens_alone']:+.3f} "
                f"[{aid['ci95'][0]:+.3f}, {aid['ci95'][1]:+.3f}]"
            )
            if aid
            else "   0"
        )
        for j, s in enumerate(scorers or [""]):
            x = r.get(s) or {}
            head = f"{r['class']:<16} {r['features']:>8}" if j == 0 else " " * 25
            body = (
                (
                    f"  {s:<10} {x['n']:>5}  {x['label']:.3f}  {x['minus_baseline']:+.3f} "
                    f"[{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
                )
                if x
                else ""
            )
            lines.append(head + body + ("    " + atext if j == 0 else ""))
    return "\n".join(lines)


def before_after(db, before_db, n: int, seed: int) -> list[tuple[str, int, str, str]]:
    after = {k: v["text"] for k, v in _stats_rows(db).items()}
    before = {}
    for hook, idx, text in before_db._q(
        "SELECT d.hook, e.idx, e.text FROM explanations e JOIN dictionaries d "
        "ON d.id = e.dictionary WHERE e.method = 'stats'"
    ):
        before[(hook, idx)] = text
    both = sorted(set(after) & set(before))
    pick = sorted(random.Random(seed).sample(both, min(n, len(both))))
    return [(h, i, before[(h, i)], after[(h, i)]) for h, i in pick]


def before_after_scores(db, before_db) -> dict:
    """The stats labels of two atlases explained on the same windows (the same build, two labeller
    versions), paired per feature on their stored TEST scores: mean after - before with a bootstrap
    interval per scorer, over all shared features and over those whose label changed; and how many
    labels name a concept in each."""
    after, before = _stats_rows(db), _stats_rows(before_db)
    both = sorted(set(after) & set(before))
    out: dict = {
        "features": len(both),
        "concept_before": sum(bool(before[k]["details"].get("concept")) for k in both),
        "concept_after": sum(bool(after[k]["details"].get("concept")) for k in both),
        "changed": sum(after[k]["text"] != before[k]["text"] for k in both),
        "scorers": {},
    }
    for s in sorted({s for k in both for s in after[k]["scores"]}):
        for subset in ("all", "changed"):
            d = [
                after[k]["scores"][s] - before[k]["scores"][s]
                for k in both
                if s in before[k]["scores"]
                and after[k]["scores"].get(s) == after[k]["scores"].get(s)
                and before[k]["scores"][s] == before[k]["scores"][s]
                and (subset == "all" or after[k]["text"] != before[k]["text"])
            ]
            m, lo, hi = paired_ci(d)
            out["scorers"].setdefault(s, {})[subset] = {
                "n": len(d),
                "after_minus_before": round(m, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    from ..atlas.db import AtlasDB

    ap = argparse.ArgumentParser(
        prog="python -m lmscope.explain.label_report", description=__doc__.split("\n")[0]
    )
    ap.add_argument("atlas")
    ap.add_argument(
        "--before", help="an atlas explained by an earlier version: print a before/after draw"
    )
    ap.add_argument("--draw", type=int, default=20, help="features in the before/after draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--versus", default="", help="also compare this method (e.g. llm) with stats, paired"
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    for p in [a.atlas] + ([a.before] if a.before else []):
        if not (Path(p) / "atlas.db").is_file():
            print(
                f"{p} has no atlas.db; pass an atlas folder explained by `lmscope explain`",
                file=sys.stderr,
            )
            return 2
    with AtlasDB(Path(a.atlas) / "atlas.db", readonly=True) as db:
        rows = class_table(db)
        vs = versus_stats(db, a.versus) if a.versus else None
        ba = bas = None
        if a.before:
            with AtlasDB(Path(a.before) / "atlas.db", readonly=True) as bdb:
                ba = before_after(db, bdb, a.draw, a.seed)
                bas = before_after_scores(db, bdb)
    if a.json:
        print(
            json.dumps(
                {"classes": rows, "before_after": ba, "before_after_scores": bas, "versus": vs},
                indent=1,
            )
        )
        return 0
    print(format_table(rows))
    if vs:
        print(
            f"\n{vs['method']} vs stats on the {vs['features']} features both explained (test "
            "windows, paired):"
        )
        for s, x in vs["scorers"].items():
            print(
                f"  {s:<10} n {x['n']:>4}  {vs['method']} {x['method']:.3f}  stats "
                f"{x['stats']:.3f}  "
                f"difference {x['minus_stats']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
            )
    if bas:
        print(
            f"\nbefore/after on the {bas['features']} features in both (TEST scores, paired): "
            "labels naming a "
            f"concept {bas['concept_before']} -> {bas['concept_after']}; labels changed "
            f"{bas['changed']}"
        )
        for s, x in bas["scorers"].items():
            for subset, y in x.items():
                print(
                    f"  {s:<10} {subset:<8} n {y['n']:>5}  after - before "
                    f"{y['after_minus_before']:+.4f} "
                    f"[{y['ci95'][0]:+.4f}, {y['ci95'][1]:+.4f}]"
                )
    if ba:
        print(f"\nbefore/after: {len(ba)} features drawn with random.Random({a.seed}).sample")
        print("| feature | before | after |\n|---|---|---|")
        for h, i, b, t in ba:
            print(f"| {h}/{i} | `{b}` | `{t}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

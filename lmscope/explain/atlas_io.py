"""Batched reads and writes of the explain stage against atlas.db.

`AtlasDB.feature` reads one feature with ~6 queries plus its explanations and scores, and every
`add_explanation` / `add_score` commits on its own: at 4,608 features x 3 explanations x 3 scores
that is ~40k commits, which alone capped `lmscope explain` near 100 features/s. Here a batch of
features is read with 3 queries and written in ONE transaction, with exactly the rows (and search
index entries) that `add_explanation`, `add_score` and `set_label` write.
(These belong in atlas/db.py as bulk methods; they live here until that file's owner moves them.)
"""

from __future__ import annotations

import json
import time

from ..atlas.db import Example, FeatureProfile, LogitEffect


def load_profiles(db, hook: str, idxs: list[int]) -> list[FeatureProfile]:
    """Profiles of these features of one dictionary (without their explanations), in idxs order."""
    did = db._dict_id(hook)
    marks = ",".join("?" * len(idxs))
    stats = {r[0]: r[1:] for r in db.conn.execute(
        f"SELECT idx, density, fires, max_act, mean_act, mean_firing, histogram, label FROM features "
        f"WHERE dictionary = ? AND idx IN ({marks})", (did, *idxs))}
    ex: dict = {i: {"top": [], "quantile": [], "negative": []} for i in idxs}
    for idx, kind, bucket, score, tid, toks, acts, pos in db.conn.execute(
            f"SELECT idx, kind, bucket, score, token_id, tokens, acts, position FROM examples "
            f"WHERE dictionary = ? AND idx IN ({marks}) ORDER BY idx, kind, bucket DESC, rank", (did, *idxs)):
        ex[idx][kind].append(Example(kind, json.loads(toks), json.loads(acts), pos, score, bucket, [], tid))
    logits: dict = {i: {"promoted": [], "suppressed": []} for i in idxs}
    for idx, kind, tid, tok, val in db.conn.execute(
            f"SELECT idx, kind, token_id, token, value FROM logit_effects WHERE dictionary = ? "
            f"AND idx IN ({marks}) ORDER BY idx, kind, rank", (did, *idxs)):
        logits[idx][kind].append(LogitEffect(tok, tid, val))
    out = []
    for i in idxs:
        s = stats.get(i, (None,) * 7)
        out.append(FeatureProfile(hook, i, s[0], s[1], s[2], s[3], s[4], json.loads(s[5]) if s[5] else None,
                                  s[6], ex[i]["top"], ex[i]["quantile"], ex[i]["negative"],
                                  logits[i]["promoted"], logits[i]["suppressed"], []))
    return out


def write_explanations(db, rows: list) -> None:
    """rows: (profile, [(method, version, text, details, [ScoreResult])], label or None), one
    transaction. The label is set only where the feature has none (never overwrite a hand label)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    c = db.conn
    with c:
        for p, expl, label in rows:
            did = db._dict_id(p.hook)
            for m, v, text, details, scores in expl:
                cur = c.execute("INSERT INTO explanations (dictionary, idx, method, version, text, created, "
                                "details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (did, p.feature, m, v, text, now, json.dumps(details)))
                eid = cur.lastrowid
                c.execute("INSERT INTO search VALUES (?, ?, ?, 'explanation', ?)", (text, p.hook, p.feature, eid))
                c.executemany("INSERT INTO scores (explanation_id, scorer, metric, value, n_pos, n_neg, details, "
                              "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              [(eid, s.scorer, s.metric, float(s.value), s.n_pos, s.n_neg,
                                json.dumps(s.details) if s.details is not None else None, now) for s in scores])
            if label and not p.label:
                c.execute("INSERT INTO features (dictionary, idx, label) VALUES (?, ?, ?) ON CONFLICT "
                          "(dictionary, idx) DO UPDATE SET label = excluded.label", (did, p.feature, label))
                c.execute("DELETE FROM search WHERE hook = ? AND idx = ? AND source = 'label'", (p.hook, p.feature))
                c.execute("INSERT INTO search VALUES (?, ?, ?, 'label', NULL)", (label, p.hook, p.feature))

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
    rows = db.conn.execute(f"SELECT idx, kind, bucket, score, token_id, tokens, acts, position FROM examples "
                           f"WHERE dictionary = ? AND idx IN ({marks}) ORDER BY idx, kind, bucket DESC, rank",
                           (did, *idxs)).fetchall()
    # One json.loads per column of the whole batch, not two per example (the per-call cost dominated).
    toks = json.loads("[" + ",".join(r[5] for r in rows) + "]")
    acts = json.loads("[" + ",".join(r[6] for r in rows) + "]")
    for (idx, kind, bucket, score, tid, _, _, pos), t, a in zip(rows, toks, acts):
        ex[idx][kind].append(Example(kind, t, a, pos, score, bucket, [], tid))
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
    transaction. The label is set only where the feature has none (never overwrite a hand label).
    Baselines (methods "baseline-*") are not put in the full-text search: a search for "horse" must
    not find the random label another feature lent to this one."""
    import sqlite3

    from ..atlas.db import _db_error
    from ..errors import UserError

    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    c = db.conn
    try:
        c.execute("BEGIN IMMEDIATE")  # we hold the write lock: explanation ids can be assigned here
        eid = c.execute("SELECT COALESCE(MAX(id), 0) FROM explanations").fetchone()[0]
        expl, scores, search, labelled = [], [], [], []
        for p, items, label in rows:
            did = db._dict_id(p.hook)
            for m, v, text, details, ss in items:
                eid += 1
                expl.append((eid, did, p.feature, m, v, text, now, json.dumps(details)))
                if not m.startswith("baseline-"):
                    search.append((text, p.hook, p.feature, "explanation", eid))
                scores += [(eid, s.scorer, s.metric, float(s.value), s.n_pos, s.n_neg,
                            json.dumps(s.details) if s.details is not None else None, now) for s in ss]
            if label and not p.label:
                labelled.append((did, p, label))
        c.executemany("INSERT INTO explanations (id, dictionary, idx, method, version, text, created, details) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", expl)
        c.executemany("INSERT INTO scores (explanation_id, scorer, metric, value, n_pos, n_neg, details, created) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", scores)
        c.executemany("INSERT INTO features (dictionary, idx, label) VALUES (?, ?, ?) ON CONFLICT "
                      "(dictionary, idx) DO UPDATE SET label = excluded.label",
                      [(did, p.feature, label) for did, p, label in labelled])
        # No DELETE of an old 'label' search row: these features have no label, and set_label never
        # leaves a row behind for an empty one (a DELETE on FTS5's unindexed columns scans the whole
        # search table: once per feature that was quadratic).
        search += [(label, p.hook, p.feature, "label", None) for _, p, label in labelled]
        c.executemany("INSERT INTO search VALUES (?, ?, ?, ?, ?)", search)
        c.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise UserError(_db_error(db.path, e)) from None
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise

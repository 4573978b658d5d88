"""The atlas database: one SQLite file (atlas/atlas.db) that every later stage reads and writes.

    db = AtlasDB.open("atlas/atlas.db")                       # or readonly=True (viewer)
    p = db.feature("blocks.15.resid_post", 1234)               # FeatureProfile (stats, examples,
    logits)
    eid = db.add_explanation("blocks.15.resid_post", 1234, "horses", method="delphi", version="1")
    db.add_score(eid, scorer="detection", metric="balanced_accuracy", value=0.82, n_pos=50,
    n_neg=50)
    db.search_labels("horse")                                  # FTS5 over labels and explanations

Why SQLite: embedded, one file per atlas, and in WAL mode readers never block the one writer
(the viewer reads while explanations are written). The schema has a version and `migrate`
brings older files forward; a file from a newer lmscope is refused with one line.

Concurrent use and damage (docs/security.md):
- one writing process at a time: a writable open takes an exclusive lock on atlas.db.lock
  (flock, released by the kernel when the process dies, even by kill -9); a second process that
  wants to write waits up to `timeout` and is then refused with one line naming the holder.
  Opens within one process share the lock. Read-only opens (the viewer) never take it;
- on open the file's header is checked and `PRAGMA quick_check` runs (files up to
  QUICK_CHECK_MAX_BYTES; beyond that only the header and schema are checked, to keep opening
  fast): a damaged file is one line saying how to rebuild it, never a traceback mid-page.

Tables: meta(key, value; 'windows' = {ctx_len, window} of the stored examples);
dictionaries(hook, arch, d_sae, d_in, n_tokens, config);
features(dictionary, idx, density, fires, max_act, mean_act, mean_firing, histogram, label);
contexts(id, tokens): every profiled context's token ids ONCE (int32 blob), id = global context
index; vocab(id, token): the token strings; example_sets(dictionary, idx, kind
top|quantile|negative, n, buckets, scores, token_index, acts): one row per feature and kind with
its n examples as little-endian arrays (int8 buckets, float32 scores, int64 global token ids,
float16 window activations [n, window]); a window's tokens are cut from its context on read
(schema 2: v1 stored a JSON copy of every window's tokens, ids and acts per example, 6.7x the
bytes on the same tokens and most of the build's write time); logit_effects(dictionary, idx, kind
promoted|suppressed, rank, token_id, token, value); explanations(id, dictionary, idx, method,
version, text, created, details); scores(id, explanation_id, scorer, metric, value, n_pos,
n_neg, details, created); search (FTS5: text of every label and explanation).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError, close_matches
from .histogram import Histogram, decode_histogram

SCHEMA_VERSION = 2
OLDEST_READABLE = 2
"""Schema 1 (per-example JSON windows) is not read: such a file is one line saying to rebuild."""
QUICK_CHECK_MAX_BYTES = 1 << 30
"""Files up to this size get `PRAGMA quick_check` on open: 0.38 s median (5 runs) for the default
run's 77 MB atlas.db on a 2-core machine at load 12-15, so ~5 s at the limit."""
_HEADER = b"SQLite format 3\x00"

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS dictionaries (
    id INTEGER PRIMARY KEY, hook TEXT UNIQUE NOT NULL, arch TEXT, d_sae INTEGER, d_in INTEGER,
    n_tokens INTEGER, config TEXT);
CREATE TABLE IF NOT EXISTS features (
    dictionary INTEGER NOT NULL REFERENCES dictionaries(id), idx INTEGER NOT NULL,
    density REAL, fires INTEGER, max_act REAL, mean_act REAL, mean_firing REAL,
    histogram TEXT, label TEXT, PRIMARY KEY (dictionary, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY, dictionary INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL,
    bucket INTEGER, rank INTEGER, score REAL, token_id INTEGER, tokens TEXT, token_ids TEXT,
    acts TEXT, position INTEGER);
CREATE INDEX IF NOT EXISTS examples_feature ON examples (dictionary, idx, kind);
CREATE TABLE IF NOT EXISTS logit_effects (
    dictionary INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL,
    token_id INTEGER, token TEXT, value REAL,
    PRIMARY KEY (dictionary, idx, kind, rank)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS explanations (
    id INTEGER PRIMARY KEY, dictionary INTEGER NOT NULL, idx INTEGER NOT NULL, method TEXT NOT NULL,
    version TEXT, text TEXT NOT NULL, created TEXT, details TEXT);
CREATE INDEX IF NOT EXISTS explanations_feature ON explanations (dictionary, idx);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY, explanation_id INTEGER NOT NULL REFERENCES explanations(id),
    scorer TEXT NOT NULL, metric TEXT NOT NULL, value REAL, n_pos INTEGER, n_neg INTEGER,
    details TEXT, created TEXT);
CREATE INDEX IF NOT EXISTS scores_explanation ON scores (explanation_id);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(
    text, hook UNINDEXED, idx UNINDEXED, source UNINDEXED, ref UNINDEXED);
"""

# v2: the examples are stored per feature and kind as packed arrays over contexts stored once;
# the v1 per-example rows are dropped (profiles need a rebuild; labels and explanations stay).
_SCHEMA_V2 = """
DROP INDEX IF EXISTS examples_feature;
DROP TABLE IF EXISTS examples;
DELETE FROM meta WHERE key = 'build';
CREATE TABLE IF NOT EXISTS contexts (id INTEGER PRIMARY KEY, tokens BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS example_sets (
    dictionary INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
    buckets BLOB, scores BLOB, token_index BLOB NOT NULL, acts BLOB,
    PRIMARY KEY (dictionary, idx, kind)) WITHOUT ROWID;
"""

# version -> SQL that brings a file from version-1 to version (append here; never edit old ones)
MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
KINDS = ("top", "quantile", "negative")


# --- typed results -----------------------------------------------------------------------
@dataclass
class Example:
    kind: str
    """top | quantile | negative"""
    tokens: list[str]
    acts: list[float]
    """the feature's activation on every token of the window (zeros for negatives)"""
    position: int
    """index of the peak token inside `tokens`"""
    score: float
    """activation at the peak (0 for negatives)"""
    bucket: int | None = None
    """quantile bucket (octave) for kind=quantile"""
    token_ids: list[int] = field(default_factory=list)
    token_index: int | None = None
    """global token id in the build's corpus (context x ctx_len + position)"""


@dataclass
class LogitEffect:
    token: str
    token_id: int
    value: float


@dataclass
class Explanation:
    id: int
    hook: str
    feature: int
    method: str
    version: str
    text: str
    created: str
    details: dict | None = None
    scores: list[Score] = field(default_factory=list)


@dataclass
class Score:
    id: int
    explanation_id: int
    scorer: str
    metric: str
    value: float
    n_pos: int | None
    n_neg: int | None
    details: dict | None = None


@dataclass
class FeatureProfile:
    hook: str
    feature: int
    density: float | None
    fires: int | None
    max_act: float | None
    mean_act: float | None
    """mean over all tokens"""
    mean_firing: float | None
    """mean over firing tokens"""
    histogram: Histogram | None
    """nonzero activations on log2 bins, first to last nonempty bin (None: never fired)"""
    label: str | None
    top: list[Example]
    quantiles: list[Example]
    negatives: list[Example]
    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    explanations: list[Explanation]


@dataclass
class SearchHit:
    hook: str
    feature: int
    text: str
    source: str
    """label | explanation"""
    rank: float


@dataclass
class BulkExplanations:
    """One feature's explanations for `AtlasDB.add_explanations`."""

    hook: str
    idx: int
    explanations: list[tuple]
    """(method, version, text, details, scores, search): scores as (scorer, metric, value, n_pos,
    n_neg, details) tuples; search=False keeps the text out of the full-text search (a baseline's
    borrowed label must not make a search for "horse" find this feature)"""
    label_if_unset: str | None = None
    """the feature's label, set only where it has none"""
    current_label: str | None = None
    """the label the feature had when it was read"""


@dataclass
class DictionaryInfo:
    hook: str
    arch: str | None
    d_sae: int
    d_in: int | None
    n_tokens: int | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _json(x) -> str | None:
    return None if x is None else json.dumps(x)


def _unjson(s):
    return None if s is None else json.loads(s)


def _old_schema_error(path, found: int) -> UserError:
    return UserError(
        f"atlas database {path} was built by an older lmscope (atlas schema {found}, this one "
        f"reads {SCHEMA_VERSION}); rebuild it with `lmscope atlas build {Path(path).parent} "
        "--force` (labels and explanations are kept)"
    )


def migrate(conn: sqlite3.Connection, *, upgrade: bool = True, path=None) -> int:
    """Bring the schema to SCHEMA_VERSION (idempotent). Returns the version found before. A file
    older than OLDEST_READABLE is upgraded only with `upgrade` (the atlas build, which refills the
    profiles); any other writer gets the one-line rebuild error."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
    if not has:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise UserError(
            f"atlas database schema {found} is newer than this lmscope ({SCHEMA_VERSION}); "
            "upgrade lmscope"
        )
    if found == SCHEMA_VERSION:
        return found  # nothing to write: opening never needs the write lock
    if 0 < found < OLDEST_READABLE and not upgrade:
        raise _old_schema_error(path, found)
    for v in range(found + 1, SCHEMA_VERSION + 1):
        conn.executescript(MIGRATIONS[v])
    with conn:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    return found


class AtlasDB:
    """Typed access to atlas.db. Readers and one writer may work at the same time (WAL)."""

    def __init__(
        self, path: str | Path, readonly: bool = False, timeout: float = 30.0, upgrade: bool = False
    ) -> None:
        """`upgrade`: bring an older schema forward even where that drops its profiles (only the
        atlas build passes it: it writes them again)."""
        self.path = Path(path)
        self.readonly = readonly
        self._writer = None
        if readonly and not self.path.is_file():
            raise UserError(
                f"no atlas database at {self.path}; run `lmscope atlas build {self.path.parent}` "
                "first"
            )
        _check_header(self.path)
        if not readonly:
            self._writer = _WriterLock.acquire(self.path, timeout)
        try:
            if readonly:
                self.conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                migrate(self.conn, upgrade=upgrade, path=self.path)
            self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._check_readable()
            self._check_intact()
        except sqlite3.DatabaseError as e:
            self._release()
            raise UserError(_db_error(self.path, e)) from None
        except BaseException:
            self._release()
            raise
        self._dict_ids: dict[str, int] = {}
        self._read_lock = threading.Lock()
        self._vocab: list[str] | None = None
        self._contexts: dict[int, np.ndarray] | None = None
        self._windows: tuple[int, int] | None = None
        self._flat: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> AtlasDB:
        return cls(path, readonly=readonly)

    def _check_readable(self) -> None:
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        if row and row[0] > SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has schema {row[0]}, newer than this lmscope; upgrade lmscope"
            )
        if row and row[0] < OLDEST_READABLE:
            raise _old_schema_error(self.path, row[0])

    def _check_intact(self) -> None:
        if self.path.is_file() and self.path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
            rows = self.conn.execute("PRAGMA quick_check(3)").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                raise sqlite3.DatabaseError(
                    "database disk image is malformed: " + "; ".join(str(r[0]) for r in rows)[:200]
                )

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def close(self) -> None:
        self.conn.close()
        self._release()

    def __enter__(self) -> AtlasDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self):
        """One write transaction; a lock held past the busy timeout becomes one UserError line."""
        if self.readonly:
            raise UserError(f"{self.path} is open read-only")
        try:
            with self.conn:
                yield self.conn
        except sqlite3.OperationalError as e:
            raise UserError(_db_error(self.path, e)) from None

    def _q(self, sql: str, args=()) -> list[tuple]:
        # One connection may serve several threads (the viewer); a query and its fetch must not
        # interleave with another thread's.
        try:
            with self._read_lock:
                return self.conn.execute(sql, args).fetchall()
        except (
            sqlite3.DatabaseError
        ) as e:  # locked past the timeout, or a page damaged since opening
            raise UserError(_db_error(self.path, e)) from None

    # --- meta and dictionaries ----------------------------------------------------------
    def meta(self) -> dict:
        return {k: _unjson(v) for k, v in self._q("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _json(value)))

    def dictionaries(self) -> list[DictionaryInfo]:
        return [
            DictionaryInfo(*r)
            for r in self._q(
                "SELECT hook, arch, d_sae, d_in, n_tokens FROM dictionaries ORDER BY id"
            )
        ]

    def _dict_id(self, hook: str, *, create: dict | None = None) -> int:
        if hook in self._dict_ids:
            return self._dict_ids[hook]
        row = self._q("SELECT id, d_sae FROM dictionaries WHERE hook = ?", (hook,))
        if not row:
            if create is None:
                hooks = [d.hook for d in self.dictionaries()]
                raise UserError(
                    f"no dictionary {hook!r} in this atlas{close_matches(hook, hooks)}"
                    if hooks
                    else f"no dictionary {hook!r}: the atlas database is empty "
                    "(run `lmscope atlas build` first)"
                )
            cur = self.conn.execute(
                "INSERT INTO dictionaries (hook, arch, d_sae, d_in, n_tokens, config) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    hook,
                    create.get("arch"),
                    create["d_sae"],
                    create.get("d_in"),
                    create.get("n_tokens"),
                    _json(create.get("config")),
                ),
            )
            self._dict_ids[hook] = cur.lastrowid
            return cur.lastrowid
        self._dict_ids[hook] = row[0][0]
        return row[0][0]

    def _check_feature(self, hook: str, idx: int) -> int:
        did = self._dict_id(hook)
        d_sae = self._q("SELECT d_sae FROM dictionaries WHERE id = ?", (did,))[0][0]
        if not 0 <= idx < d_sae:
            raise UserError(f"feature {idx} is out of range for {hook} (0..{d_sae - 1})")
        return did

    # --- profiles -------------------------------------------------------------------------
    def feature(self, hook: str, idx: int) -> FeatureProfile:
        """Everything stored about one feature (UserError for an unknown dictionary or index)."""
        did = self._check_feature(hook, idx)
        row = self._q(
            "SELECT density, fires, max_act, mean_act, mean_firing, histogram, label FROM features "
            "WHERE dictionary = ? AND idx = ?",
            (did, idx),
        )
        stats = row[0] if row else (None,) * 7
        ex = self._examples(did, [idx], with_ids=True)[idx]
        logits = {"promoted": [], "suppressed": []}
        for kind, tid, tok, val in self._q(
            "SELECT kind, token_id, token, value FROM logit_effects "
            "WHERE dictionary = ? AND idx = ? ORDER BY kind, rank",
            (did, idx),
        ):
            logits[kind].append(LogitEffect(tok, tid, val))
        return FeatureProfile(
            hook,
            idx,
            stats[0],
            stats[1],
            stats[2],
            stats[3],
            stats[4],
            decode_histogram(_unjson(stats[5])),
            stats[6],
            ex["top"],
            ex["quantile"],
            ex["negative"],
            logits["promoted"],
            logits["suppressed"],
            self.explanations(hook, idx),
        )

    def densities(self, hook: str) -> list[tuple[int, float, float]]:
        """(idx, density, max_act) of every profiled feature of a dictionary."""
        return self._q(
            "SELECT idx, density, max_act FROM features WHERE dictionary = ? ORDER BY idx",
            (self._dict_id(hook),),
        )

    # --- labels, explanations, scores -------------------------------------------------------
    def label(self, hook: str, idx: int) -> str | None:
        row = self._q(
            "SELECT label FROM features WHERE dictionary = ? AND idx = ?",
            (self._dict_id(hook), idx),
        )
        return row[0][0] if row else None

    def labels(self, hook: str, idxs: list[int]) -> dict[int, str | None]:
        """{idx: label} of many features of one dictionary in one query (the scan's bulk read)."""
        if not idxs:
            return {}
        did = self._dict_id(hook)
        out: dict[int, str | None] = {}
        for lo in range(0, len(idxs), 900):  # SQLite's bound-parameter limit
            part = idxs[lo : lo + 900]
            marks = ",".join("?" * len(part))
            out.update(
                self._q(
                    f"SELECT idx, label FROM features WHERE dictionary = ? AND idx IN ({marks})",
                    (did, *part),
                )
            )
        return out

    def activity_means(self) -> dict[str, float]:
        """{hook: mean per profiled token of the sum of all its features' activations} = the sum
        of the features' mean_act (each is sum of activations / profiled tokens). The scan's
        per-layer reference that makes layers comparable (lmscope.read.scan)."""
        return dict(
            self._q(
                "SELECT d.hook, SUM(f.mean_act) FROM features f "
                "JOIN dictionaries d ON d.id = f.dictionary GROUP BY d.id"
            )
        )

    def set_label(self, hook: str, idx: int, text: str | None) -> None:
        did = self._check_feature(hook, idx)
        with self._tx():
            self.conn.execute(
                "INSERT INTO features (dictionary, idx, label) VALUES (?, ?, ?) "
                "ON CONFLICT (dictionary, idx) DO UPDATE SET label = excluded.label",
                (did, idx, text),
            )
            self.conn.execute(
                "DELETE FROM search WHERE hook = ? AND idx = ? AND source = 'label'", (hook, idx)
            )
            if text:
                self.conn.execute(
                    "INSERT INTO search VALUES (?, ?, ?, 'label', NULL)", (text, hook, idx)
                )

    def add_explanation(
        self,
        hook: str,
        idx: int,
        text: str,
        *,
        method: str,
        version: str = "1",
        details: dict | None = None,
    ) -> int:
        """Store one explanation (a feature may have many: one per method/version). Returns its
        id."""
        did = self._check_feature(hook, idx)
        with self._tx():
            cur = self.conn.execute(
                "INSERT INTO explanations (dictionary, idx, method, version, text, created, "
                "details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (did, idx, method, version, text, _now(), _json(details)),
            )
            self.conn.execute(
                "INSERT INTO search VALUES (?, ?, ?, 'explanation', ?)",
                (text, hook, idx, cur.lastrowid),
            )
        return cur.lastrowid

    def explanations(self, hook: str, idx: int) -> list[Explanation]:
        did = self._dict_id(hook)
        out = [
            Explanation(i, hook, idx, m, v, t, c, _unjson(d))
            for i, m, v, t, c, d in self._q(
                "SELECT id, method, version, text, created, details FROM explanations WHERE "
                "dictionary = ? AND idx = ? "
                "ORDER BY id",
                (did, idx),
            )
        ]
        for e in out:
            e.scores = self.scores(e.id)
        return out

    def add_score(
        self,
        explanation_id: int,
        *,
        scorer: str,
        metric: str,
        value: float,
        n_pos: int | None = None,
        n_neg: int | None = None,
        details: dict | None = None,
    ) -> int:
        if not self._q("SELECT 1 FROM explanations WHERE id = ?", (explanation_id,)):
            raise UserError(f"no explanation with id {explanation_id}")
        with self._tx():
            cur = self.conn.execute(
                "INSERT INTO scores (explanation_id, scorer, metric, value, n_pos, n_neg, details, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    explanation_id,
                    scorer,
                    metric,
                    float(value),
                    n_pos,
                    n_neg,
                    _json(details),
                    _now(),
                ),
            )
        return cur.lastrowid

    def scores(self, explanation_id: int) -> list[Score]:
        return [
            Score(i, e, s, m, v, p, n, _unjson(d))
            for i, e, s, m, v, p, n, d in self._q(
                "SELECT id, explanation_id, scorer, metric, value, n_pos, n_neg, details FROM "
                "scores "
                "WHERE explanation_id = ? ORDER BY id",
                (explanation_id,),
            )
        ]

    def search_labels(self, query: str, limit: int = 20) -> list[SearchHit]:
        """Full-text search (FTS5, bm25 ranking) over labels and explanations; best first."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in query).split() if w]
        if not words:
            return []
        match = " ".join(f'"{w}"*' for w in words)
        rows = self._q(
            "SELECT hook, idx, text, source, rank FROM search WHERE search MATCH ? "
            "ORDER BY rank LIMIT ?",
            (match, int(limit)),
        )
        return [SearchHit(h, int(i), t, s, float(r)) for h, i, t, s, r in rows]

    def score_values(self) -> list[tuple[str, str, float]]:
        """(scorer, metric, value) of every stored score (the viewer's overview distributions)."""
        return [tuple(r) for r in self._q("SELECT scorer, metric, value FROM scores")]

    def summary(self) -> dict:
        return {
            "dictionaries": [d.__dict__ for d in self.dictionaries()],
            "meta": self.meta(),
            "n_features": self._q("SELECT COUNT(*) FROM features")[0][0],
            "n_explanations": self._q("SELECT COUNT(*) FROM explanations")[0][0],
        }

    # --- bulk reads and writes (the explain stage: thousands of features per call) ----------------
    def feature_profiles(self, hook: str, idxs: list[int]) -> list[FeatureProfile]:
        """Profiles of these features of one dictionary, in idxs order, WITHOUT their explanations
        (`feature` reads one feature with ~6 queries plus its explanations; this reads a batch with
        3).
        Examples carry no token_ids (the explain stage never reads them)."""
        if not idxs:
            return []
        did = self._dict_id(hook)
        marks = ",".join("?" * len(idxs))
        stats = {
            r[0]: r[1:]
            for r in self._q(
                "SELECT idx, density, fires, max_act, mean_act, mean_firing, histogram, label "
                "FROM features "
                f"WHERE dictionary = ? AND idx IN ({marks})",
                (did, *idxs),
            )
        }
        ex = self._examples(did, idxs, with_ids=False)
        logits: dict = {i: {"promoted": [], "suppressed": []} for i in idxs}
        for idx, kind, tid, tok, val in self._q(
            f"SELECT idx, kind, token_id, token, value FROM logit_effects WHERE dictionary = ? "
            f"AND idx IN ({marks}) ORDER BY idx, kind, rank",
            (did, *idxs),
        ):
            logits[idx][kind].append(LogitEffect(tok, tid, val))
        out = []
        for i in idxs:
            s = stats.get(i, (None,) * 7)
            hist = decode_histogram(_unjson(s[5]))
            out.append(
                FeatureProfile(
                    hook,
                    i,
                    s[0],
                    s[1],
                    s[2],
                    s[3],
                    s[4],
                    hist,
                    s[6],
                    ex[i]["top"],
                    ex[i]["quantile"],
                    ex[i]["negative"],
                    logits[i]["promoted"],
                    logits[i]["suppressed"],
                    [],
                )
            )
        return out

    def example_windows(self, hook: str):
        """(idx, token_id, position, tokens_json) of every stored example window of a dictionary, in
        storage order (feature, then top, quantile, negative), tokens as JSON text."""
        did = self._dict_id(hook)
        idxs = [i for (i,) in self._q("SELECT idx FROM features WHERE dictionary = ?", (did,))]
        for s in range(0, len(idxs), 512):
            for idx, kinds in self._examples(did, idxs[s : s + 512], with_ids=False).items():
                for kind in KINDS:
                    for e in kinds[kind]:
                        yield idx, e.token_index, e.position, json.dumps(e.tokens)

    def example_spans(self, hook: str) -> np.ndarray:
        """[n, 3] int64 rows (idx, start, end): the global token span [start, end) of every stored
        example window of a dictionary, the spans `example_windows` yields, computed from the
        packed peaks without decoding any window (what the explain embedder needs)."""
        did = self._dict_id(hook)
        L, W = self._geometry()
        after = W // 4
        peak = W - 1 - after
        idxs, tids = [], []
        for idx, tindex in self._q(
            "SELECT idx, token_index FROM example_sets WHERE dictionary = ? AND n > 0", (did,)
        ):
            t = np.frombuffer(tindex, dtype="<i8")
            idxs.append(np.full(len(t), idx, dtype=np.int64))
            tids.append(t)
        if not tids:
            return np.zeros((0, 3), np.int64)
        tid = np.concatenate(tids)
        pos = tid % L
        base = tid - pos  # global id of the context's first token
        start = base + np.maximum(pos - peak, 0)
        end = base + np.minimum(pos + after + 1, L)
        return np.stack([np.concatenate(idxs), start, end], axis=1)

    def token_texts(self, gids: np.ndarray) -> list[str]:
        """The token string at each of these global token ids (from the stored contexts)."""
        L, _ = self._geometry()
        vocab, ctxs = self._vocab_list(), self._context_rows(None)
        nv = len(vocab)
        out = []
        for g in np.asarray(gids, dtype=np.int64).tolist():
            t = int(ctxs[g // L][g % L])
            out.append(vocab[t] if t < nv else f"<{t}>")
        return out

    # --- packed examples (schema 2) ---------------------------------------------------------
    def _geometry(self) -> tuple[int, int]:
        """(ctx_len, window) of the stored examples."""
        if self._windows is None:
            w = self.meta().get("windows") or {"ctx_len": 1, "window": 1}
            self._windows = (int(w["ctx_len"]), int(w["window"]))
        return self._windows

    def _vocab_list(self) -> list[str]:
        if self._vocab is None:
            self._vocab = [t for (t,) in self._q("SELECT token FROM vocab ORDER BY id")]
        return self._vocab

    def _context_rows(self, ids) -> dict[int, np.ndarray]:
        """Token ids of these contexts (all contexts are read once and kept: < 1 MB per 100k
        tokens)."""
        if self._contexts is None:
            self._contexts = {
                i: np.frombuffer(b, dtype="<i4")
                for i, b in self._q("SELECT id, tokens FROM contexts")
            }
        return self._contexts

    def _examples(self, did: int, idxs: list[int], *, with_ids: bool) -> dict[int, dict]:
        """{idx: {kind: [Example]}}: top by activation, quantiles by bucket descending then key,
        negatives by key (the order the build stores)."""
        out: dict = {i: {k: [] for k in KINDS} for i in idxs}
        if not idxs:
            return out
        rows = []
        for s in range(0, len(idxs), 900):  # under SQLite's bound-parameter limit
            part = idxs[s : s + 900]
            rows += self._q(
                "SELECT idx, kind, n, buckets, scores, token_index, acts FROM example_sets "
                f"WHERE dictionary = ? AND idx IN ({','.join('?' * len(part))})",
                (did, *part),
            )
        if not rows:
            return out
        rows = [r for r in rows if r[2]]
        if not rows:
            return out
        # Every window of every row at once (numpy over the chunk), then one plain loop that only
        # builds the Example objects: the per-row numpy calls and per-token vocabulary lookups
        # were ~2 ms per feature of `lmscope explain` on the whole-model atlas.
        L, W = self._geometry()
        flat, names = self._flat_tokens()
        after = W // 4
        peak = W - 1 - after
        offs = np.arange(-peak, after + 1)
        tid = np.concatenate([np.frombuffer(r[5], dtype="<i8") for r in rows])
        pos = tid % L
        p = pos[:, None] + offs  # [N, W] window positions in the context
        inside = (p >= 0) & (p < L)
        first = inside.argmax(1).tolist()
        length = inside.sum(1).tolist()
        toks = flat[(tid - pos)[:, None] + p.clip(0, L - 1)]  # [N, W] token ids
        acts = []
        scores: list = []
        bks: list = []
        for _, _, n, buckets, sc_b, _, a_b in rows:
            if a_b is not None:
                a = np.frombuffer(a_b, dtype="<f2").astype(np.float32).reshape(n, W)
                sc = np.frombuffer(sc_b, dtype="<f4")
                a[:, peak] = sc  # the peak exactly (the window is stored at float16 precision)
                acts.append(np.round(a.astype(np.float64), 5))
                scores += sc.tolist()
            else:
                acts.append(np.zeros((n, W)))
                scores += [0.0] * n
            bks += (
                np.frombuffer(buckets, dtype="i1").tolist() if buckets is not None else [None] * n
            )
        tl = names[toks].tolist()
        al = np.concatenate(acts).tolist()
        idl = toks.tolist() if with_ids else None
        tidl = tid.tolist()
        o = 0
        for idx, kind, n, *_ in rows:
            dst = out[idx][kind]
            for j in range(o, o + n):
                lo, hi = first[j], first[j] + length[j]
                t, a = tl[j], al[j]
                if lo or hi != W:
                    t, a = t[lo:hi], a[lo:hi]
                dst.append(
                    Example(
                        kind,
                        t,
                        a,
                        peak - lo,
                        scores[j],
                        bks[j],
                        idl[j][lo:hi] if with_ids else [],
                        tidl[j],
                    )
                )
            o += n
        return out

    def _flat_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """(token id at every global token id, the token string of every token id as an object
        array, "<id>" beyond the vocabulary), built once from the stored contexts."""
        if self._flat is None:
            L, _ = self._geometry()
            ctxs = self._context_rows(None)
            flat = np.zeros((max(ctxs, default=-1) + 1) * L, dtype=np.int64)
            for i, c in ctxs.items():
                flat[i * L : i * L + min(len(c), L)] = c[:L]
            vocab = self._vocab_list()
            top = max(int(flat.max(initial=0)) + 1, len(vocab))
            names = np.empty(top, dtype=object)
            names[: len(vocab)] = vocab
            names[len(vocab) :] = [f"<{t}>" for t in range(len(vocab), top)]
            self._flat = (flat, names)
        return self._flat

    def explained(self, method: str, version: str) -> set[tuple[str, int]]:
        """(hook, idx) of every feature with an explanation by this method and version."""
        return {
            (h, i)
            for h, i in self._q(
                "SELECT d.hook, e.idx FROM explanations e JOIN dictionaries d "
                "ON d.id = e.dictionary WHERE e.method = ? AND e.version = ?",
                (method, version),
            )
        }

    def add_explanations(self, rows: list[BulkExplanations]) -> None:
        """Store many features' explanations with their scores, and labels, in ONE transaction, with
        exactly the rows (and search entries) `add_explanation`, `add_score` and `set_label` write,
        except: an explanation with `search=False` gets no search entry, and a label is set only
        where the feature has none (`BulkExplanations.label_if_unset`; never overwrites a hand
        label)."""
        now = _now()
        c = self.conn
        if self.readonly:
            raise UserError(f"{self.path} is open read-only")
        try:
            c.execute(
                "BEGIN IMMEDIATE"
            )  # we hold the write lock: explanation ids can be assigned here
            eid = c.execute("SELECT COALESCE(MAX(id), 0) FROM explanations").fetchone()[0]
            expl, scores, search, labelled = [], [], [], []
            for r in rows:
                did = self._dict_id(r.hook)
                for m, v, text, details, ss, searchable in r.explanations:
                    eid += 1
                    expl.append((eid, did, r.idx, m, v, text, now, _json(details)))
                    if searchable:
                        search.append((text, r.hook, r.idx, "explanation", eid))
                    scores += [
                        (eid, scorer, metric, float(value), n_pos, n_neg, _json(det), now)
                        for scorer, metric, value, n_pos, n_neg, det in ss
                    ]
                if r.label_if_unset and not r.current_label:
                    labelled.append((did, r.hook, r.idx, r.label_if_unset))
            c.executemany(
                "INSERT INTO explanations (id, dictionary, idx, method, version, text, created, "
                "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                expl,
            )
            c.executemany(
                "INSERT INTO scores (explanation_id, scorer, metric, value, n_pos, n_neg, details, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                scores,
            )
            c.executemany(
                "INSERT INTO features (dictionary, idx, label) VALUES (?, ?, ?) ON CONFLICT "
                "(dictionary, idx) DO UPDATE SET label = excluded.label",
                [(did, idx, label) for did, _, idx, label in labelled],
            )
            # No DELETE of an old 'label' search row: these features have no label, and set_label
            # never
            # leaves a row behind for an empty one (a DELETE on FTS5's unindexed columns scans the
            # whole
            # search table: once per feature that was quadratic).
            search += [(label, hook, idx, "label", None) for _, hook, idx, label in labelled]
            c.executemany("INSERT INTO search VALUES (?, ?, ?, ?, ?)", search)
            c.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise UserError(_db_error(self.path, e)) from None
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    # --- writing a build (one transaction) -------------------------------------------------
    def write_corpus(
        self, ctx_len: int, window: int, contexts: dict[int, np.ndarray], vocab: list[str]
    ) -> None:
        """Replace the stored contexts (global index -> token ids), the vocabulary and the window
        geometry (in the caller's transaction)."""
        c = self.conn
        c.execute("DELETE FROM contexts")
        c.execute("DELETE FROM vocab")
        c.executemany(
            "INSERT INTO contexts VALUES (?, ?)",
            ((int(i), np.asarray(t, dtype="<i4").tobytes()) for i, t in sorted(contexts.items())),
        )
        c.executemany("INSERT INTO vocab VALUES (?, ?)", enumerate(vocab))
        c.execute(
            "INSERT OR REPLACE INTO meta VALUES ('windows', ?)",
            (json.dumps({"ctx_len": ctx_len, "window": window}),),
        )
        self._vocab = self._contexts = self._windows = self._flat = None

    def write_dictionary_profiles(
        self,
        hook: str,
        info: dict,
        features: list[tuple],
        examples: list[tuple],
        logits: list[tuple],
        *,
        commit: bool = True,
    ) -> None:
        """Replace a dictionary's profiles. features: (idx, density, fires, max_act, mean_act,
        mean_firing, histogram_json); examples: (idx, kind, n, buckets, scores, token_index, acts)
        packed as in the example_sets table; logits: (idx, kind, rank, token_id, token, value).
        Labels and explanations are kept."""
        c = self.conn
        did = self._dict_id(hook, create=info)
        c.execute(
            "UPDATE dictionaries SET arch = ?, d_sae = ?, d_in = ?, n_tokens = ?, config = ? "
            "WHERE id = ?",
            (
                info.get("arch"),
                info["d_sae"],
                info.get("d_in"),
                info.get("n_tokens"),
                _json(info.get("config")),
                did,
            ),
        )
        c.execute("DELETE FROM example_sets WHERE dictionary = ?", (did,))
        c.execute("DELETE FROM logit_effects WHERE dictionary = ?", (did,))
        c.executemany(
            "INSERT INTO features (dictionary, idx, density, fires, max_act, mean_act, "
            "mean_firing, histogram) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dictionary, idx) DO UPDATE SET "
            "density = excluded.density, fires = excluded.fires, max_act = excluded.max_act, "
            "mean_act = excluded.mean_act, mean_firing = excluded.mean_firing, histogram = "
            "excluded.histogram",
            ((did, *f) for f in features),
        )
        c.executemany(
            "INSERT INTO example_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((did, *e) for e in examples),
        )
        c.executemany(
            "INSERT INTO logit_effects VALUES (?, ?, ?, ?, ?, ?, ?)", ((did, *x) for x in logits)
        )
        if commit:
            c.commit()


def open_atlas_db(atlas, *, required: bool = False) -> AtlasDB | None:
    """The one way to open an atlas's database for reading: AtlasDB(ATLAS/atlas.db, readonly).

    `atlas`: the atlas folder (or its AtlasLayout). No atlas.db yet: None, since every reader but
    the DB's own commands works without it (features are then shown unlabeled); with `required`,
    a UserError saying how to build it. A file that is there but damaged or from a newer lmscope
    is always one UserError line with the fix, never silently ignored.
    """
    from ..layout import AtlasLayout

    layout = atlas if isinstance(atlas, AtlasLayout) else AtlasLayout(atlas)
    if not layout.db_path.exists():
        if required:
            raise UserError(
                f"{layout.root} has no atlas.db yet; run `lmscope atlas build {layout.root} "
                "--corpus C` first"
            )
        return None
    return AtlasDB(layout.db_path, readonly=True)


def _rebuild_hint(path: Path) -> str:
    return (
        f"move it away and rebuild it with `lmscope atlas build {path.parent} --force` "
        "(then rerun `lmscope explain` for the labels)"
    )


def _db_error(path: Path, e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "locked" in msg or "busy" in msg:
        return (
            f"atlas database {path} is locked by another process ({msg}); wait for it to "
            "finish and retry"
        )
    if (
        "not a database" in msg
        or "malformed" in msg
        or "file is encrypted" in msg
        or "no such table" in msg
    ):
        return f"atlas database {path} is damaged ({msg}); {_rebuild_hint(path)}"
    return f"atlas database {path}: {msg}"


def _check_header(path: Path) -> None:
    """A file that is not SQLite at all (truncated to nothing, overwritten) is refused before
    SQLite sees it: a writable open of an empty file would otherwise quietly start a new atlas
    DB."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot read atlas database {path} ({e.strerror})") from None
    if head != _HEADER:
        what = "empty" if not head else "not an SQLite file"
        raise UserError(f"atlas database {path} is damaged ({what}); {_rebuild_hint(path)}")


class _WriterLock:
    """An exclusive, per-process, reference-counted flock on <db>.lock: one writing process."""

    _held: dict[str, _WriterLock] = {}
    _guard = threading.Lock()

    def __init__(self, key: str, fd: int) -> None:
        self.key, self.fd, self.count = key, fd, 0

    @classmethod
    def acquire(cls, path: Path, timeout: float) -> _WriterLock | None:
        try:
            import fcntl
        except ImportError:  # Windows: SQLite's own locking only
            return None
        key = str(path.resolve())
        with cls._guard:
            lock = cls._held.get(key)
            if lock is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                lockfile = path.with_name(path.name + ".lock")
                fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            holder = (
                                os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "unknown"
                            )
                            os.close(fd)
                            raise UserError(
                                f"atlas database {path} is being written by another lmscope "
                                "process "
                                f"({holder}); wait for it to finish (two writers are refused so "
                                "that "
                                "neither overwrites the other's rows)"
                            ) from None
                        time.sleep(0.1)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode(), 0)
                lock = cls._held[key] = cls(key, fd)
            lock.count += 1
            return lock

    def release(self) -> None:
        with self._guard:
            self.count -= 1
            if self.count == 0:
                del self._held[self.key]
                os.close(self.fd)  # closing the descriptor drops the flock

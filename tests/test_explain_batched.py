"""The batched explain paths against their per-item references, bit for bit: the examples of a
chunk of features decoded in one numpy pass (AtlasDB._examples) and the held-out window pool
computed for all windows of a length at once (TokenEmbeddings.windows)."""

from __future__ import annotations

import numpy as np

from lmscope.atlas.db import KINDS, AtlasDB, Example
from lmscope.explain.scorers import matvec
from lmscope.explain.token_embeddings import TokenEmbeddings, _unit


def _examples_per_row(db: AtlasDB, did: int, idxs: list[int], with_ids: bool) -> dict:
    """The per-row, per-example decoding the batched reader replaced (one numpy call per stored
    row, one vocabulary lookup per token)."""
    out = {i: {k: [] for k in KINDS} for i in idxs}
    L, W = db._geometry()
    vocab = db._vocab_list()
    ctxs = db._context_rows(None)
    after = W // 4
    peak = W - 1 - after
    rows = db._q(
        "SELECT idx, kind, n, buckets, scores, token_index, acts FROM example_sets "
        f"WHERE dictionary = ? AND idx IN ({','.join('?' * len(idxs))})",
        (did, *idxs),
    )
    for idx, kind, n, buckets, scores, tindex, acts in rows:
        for j, t in enumerate(np.frombuffer(tindex, dtype="<i8").tolist()):
            c, p = divmod(t, L)
            lo, hi = max(p - peak, 0), min(p + after + 1, L)
            ids = ctxs[c][lo:hi].tolist()
            if acts is not None:
                a = np.frombuffer(acts, dtype="<f2").astype(np.float32).reshape(n, W)[j]
                sc = float(np.frombuffer(scores, dtype="<f4")[j])
                a[peak] = sc
                a = np.round(a.astype(np.float64), 5).tolist()
            else:
                a, sc = [0.0] * W, 0.0
            first = lo - (p - peak)  # where the window starts inside its W slots
            a = a[first : first + hi - lo]
            bk = int(np.frombuffer(buckets, dtype="i1")[j]) if buckets is not None else None
            toks = [vocab[i] if i < len(vocab) else f"<{i}>" for i in ids]
            out[idx][kind].append(
                Example(kind, toks, a, p - lo, sc, bk, ids if with_ids else [], t)
            )
    return out


def test_chunk_examples_equal_the_per_row_decoding(demo_atlas_root):
    db = AtlasDB(demo_atlas_root / "atlas.db", readonly=True)
    try:
        # tokens beyond the vocabulary print as "<id>": cut the vocabulary to reach that branch
        db._vocab = db._vocab_list()[:40]
        n = 0
        for d in db.dictionaries():
            did = db._dict_id(d.hook)
            idxs = [i for (i,) in db._q("SELECT idx FROM features WHERE dictionary = ?", (did,))]
            for with_ids in (False, True):
                got = db._examples(did, idxs, with_ids=with_ids)
                ref = _examples_per_row(db, did, idxs, with_ids)
                assert got == ref
            n += sum(len(v) for f in got.values() for v in f.values())
            assert any(t.startswith("<") for f in got.values() for e in f["top"] for t in e.tokens)
        assert n > 100
        # windows cut by a context edge are among them (shorter than the stored window)
        _, W = db._geometry()
        assert any(len(e.tokens) < W for f in got.values() for v in f.values() for e in v)
    finally:
        db.close()


def _pool_reduceat(te: TokenEmbeddings, spans) -> np.ndarray:
    """The window pool as it was: word-piece weights per gathered row, np.add.reduceat over the
    windows' runs of rows."""
    ab = np.asarray(spans, dtype=np.int64)
    lens = ab[:, 1] - ab[:, 0]
    first = np.r_[0, np.cumsum(lens)[:-1]]
    gids = np.repeat(ab[:, 0] - first, lens) + np.arange(lens.sum())
    r = te.rows(gids)
    w = np.where(r >= 0, te.counts[np.maximum(r, 0)], 0).astype(np.float32)
    v = te.vecs.astype(np.float32)[np.maximum(r, 0)] * w[:, None]
    return _unit(np.add.reduceat(v, first, axis=0))


def test_window_pool_is_bit_for_bit_the_reduceat_pool():
    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(5000, 3000, replace=False))  # gaps: ids never embedded weigh 0
    vecs = rng.normal(size=(len(ids), 24)).astype(np.float16)
    counts = rng.integers(0, 4, len(ids)).astype(np.int16)
    te = TokenEmbeddings(ids, vecs, counts)
    # 1..40 tokens: fewer than 8 summed in order, 8-block running sums, and their remainders
    spans = [(int(a), int(a) + int(rng.integers(1, 41))) for a in rng.integers(0, 4950, 600)]
    got, ref = te.windows(spans), _pool_reduceat(te, spans)
    assert got.dtype == ref.dtype == np.float32
    assert got.tobytes() == ref.tobytes()


def test_matvec_by_hand_and_close_to_float64():
    m = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]], dtype=np.float32)
    assert matvec(m, np.array([1.0, 1.0], dtype=np.float32)).tolist() == [3.0, 7.0, -0.5]
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 384)).astype(np.float32)
    x = rng.normal(size=384).astype(np.float32)
    ref = a.astype(np.float64) @ x.astype(np.float64)
    assert np.abs(matvec(a, x) - ref).max() < 1e-4 * np.abs(ref).max()

"""The atlas: one streaming profile pass == a dense brute-force reference; the DB; search; export;
CLI.

The atlas is the demo atlas (tiny llama, two ReLU dictionaries) where feature PLANTED fires on
"horse" and nowhere else. The reference recomputes every feature activation densely on the same
contexts, in the same batches (so the model's numbers are bit-identical), and derives density,
max, mean, top-K, histogram, reservoir samples and negatives from the full [tokens, features]
matrix.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmscope.atlas import profile as P
from lmscope.atlas.build import BuildConfig, build_atlas
from lmscope.atlas.db import SCHEMA_VERSION, AtlasDB
from lmscope.cli import main
from lmscope.errors import UserError
from lmscope.layout import AtlasLayout
from lmscope.read.demo import CALIBRATION, HOOKS, PLANTED, PLANTED_WORD, build_demo_atlas

CTX, TOKENS, BATCH, K = 32, 1024, 4, 5


def _corpus(path: Path) -> Path:
    rnd = random.Random(0)
    path.write_text("\n\n".join(" ".join(rnd.sample(CALIBRATION, 3)) for _ in range(200)))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A demo atlas without a DB, a corpus, and the model (loaded once)."""
    from lmscope.models.load import load_model

    d = tmp_path_factory.mktemp("atlas")
    root = build_demo_atlas(d / "base", profile=False)
    corpus = _corpus(d / "corpus.txt")
    lm = load_model(AtlasLayout(root).read()["model"])
    return root, corpus, lm


def _copy(base, dst: Path) -> Path:
    shutil.copytree(base[0], dst)
    return dst


def _cfg(root, corpus, **kw) -> BuildConfig:
    return BuildConfig(
        atlas=str(root),
        corpus=str(corpus),
        tokens=kw.pop("tokens", TOKENS),
        ctx_len=CTX,
        batch_size=kw.pop("batch_size", BATCH),
        top_k=K,
        ctx_window=8,
        samples=3,
        negatives=2,
        **kw,
    )


@pytest.fixture(scope="module")
def built(base, tmp_path_factory):
    root = _copy(base, tmp_path_factory.mktemp("built") / "atlas")
    res = build_atlas(_cfg(root, base[1]), progress=False, lm=base[2])
    return root, res


@pytest.fixture(scope="module")
def dense(base):
    """Dense reference: per hook [N, F] activations (invalid positions 0), tokens, global ids."""
    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.sources import iter_contexts
    from lmscope.models.runtime import run
    from lmscope.models.tokens import token_mask

    root, corpus, lm = base
    n_ctx = TOKENS // CTX
    ctxs = []
    for i, c in enumerate(iter_contexts(lm, str(corpus), ctx_len=CTX)):
        if i >= n_ctx:
            break
        ctxs.append(c)
    tokens = torch.stack(ctxs)  # [n_ctx, CTX]
    dicts = {h: load_dictionary(AtlasLayout(root).dictionary_dir(h)) for h in HOOKS}
    acts = {h: [] for h in HOOKS}
    for s in range(0, n_ctx, BATCH):  # the build's batches: bit-identical model numbers
        t = tokens[s : s + BATCH]
        out = run(lm, t, capture=list(HOOKS)).acts
        for h, d in dicts.items():
            with torch.inference_mode():
                f = d.encode(out[h].reshape(-1, out[h].shape[-1]).float()).reshape(*t.shape, -1)
            acts[h].append(f * token_mask(lm, t)[..., None])
    return {h: torch.cat(v).reshape(-1, v[0].shape[-1]) for h, v in acts.items()}, tokens, dicts, lm


# --- statistics == brute force ------------------------------------------------------------
@pytest.mark.parametrize("hook", HOOKS)
def test_stats_equal_dense_reference(built, dense, hook):
    acts, tokens, _, _ = dense
    A = acts[hook]  # [N, F]
    N, F = A.shape
    n_valid = int((A.abs().sum(1) >= 0).sum())
    with AtlasDB(built[0] / "atlas.db", readonly=True) as db:
        rows = {i: (dn, mx) for i, dn, mx in db.densities(hook)}
        for f in range(F):
            p = db.feature(hook, f)
            col = A[:, f]
            fires = int((col > 0).sum())
            assert p.fires == fires
            assert rows[f][1] == pytest.approx(float(col.max()), abs=0)
            valid = built[1].n_tokens
            assert p.density == pytest.approx(fires / valid)
            assert p.mean_act == pytest.approx(float(col.double().sum()) / valid, rel=1e-9)
            assert (sum(p.histogram.counts) if p.histogram else 0) == fires
            # exact top-K: values descending, ties broken by smaller token id
            order = sorted(range(N), key=lambda n: (-float(col[n]), n))[:K]
            want = [(n, float(col[n])) for n in order if col[n] > 0]
            assert [(e.token_index, e.score) for e in p.top] == want
            for e in p.top:  # the window holds the feature's acts around the peak
                ctx, pos = divmod(e.token_index, CTX)
                assert e.token_ids[e.position] == int(tokens[ctx, pos])
                assert e.acts[e.position] == pytest.approx(e.score, abs=1e-4)
            # reservoirs: per octave bucket the items with the smallest keys among ALL firing tokens
            nz = (col > 0).nonzero(as_tuple=True)[0]
            keys = P.pair_key(nz, torch.full_like(nz, f), 0)
            buckets = P._bucket_of(col[nz])
            want_q = set()
            for b in buckets.unique().tolist():
                m = buckets == b
                want_q |= set(nz[m][keys[m].argsort()[:3]].tolist())
            assert {e.token_index for e in p.quantiles} == want_q
            for e in p.negatives:  # non-activating: the whole window is quiet for this feature
                ctx, pos = divmod(e.token_index, CTX)
                lo, hi = (
                    max(0, pos - (8 - 1 - 8 // 4)),
                    min(CTX, pos + 8 // 4 + 1),
                )  # inside its context
                assert float(A[ctx * CTX + lo : ctx * CTX + hi, f].max()) == 0
    assert n_valid == N


@pytest.mark.parametrize("hook", HOOKS)
def test_stored_windows_equal_the_contexts(built, dense, hook):
    """Schema 2 keeps each context's tokens once and every example as (token id, float16 window
    acts): reading back gives the window the old per-example copy held, cut from the dense
    reference: the tokens around the peak inside its context, and the feature's acts on them."""
    acts, tokens, _, _ = dense
    A = acts[hook]
    W = 8
    before, after = W - 1 - W // 4, W // 4
    n_checked = 0
    with AtlasDB(built[0] / "atlas.db", readonly=True) as db:
        for f in range(A.shape[1]):
            p = db.feature(hook, f)
            for e in p.top + p.quantiles + p.negatives:
                ctx, pos = divmod(e.token_index, CTX)
                lo, hi = max(0, pos - before), min(CTX, pos + after + 1)
                assert e.token_ids == tokens[ctx, lo:hi].tolist()
                assert e.position == pos - lo
                want = A[ctx * CTX + lo : ctx * CTX + hi, f].tolist()
                if e.kind == "negative":
                    assert e.acts == [0.0] * (hi - lo) and max(want) == 0
                else:
                    assert e.score == want[pos - lo] == pytest.approx(e.acts[e.position], abs=1e-5)
                    assert e.acts == pytest.approx(want, rel=1e-3, abs=1e-4)  # float16 storage
                n_checked += 1
    assert n_checked > 100


def test_old_schema_is_one_line_and_the_build_upgrades_it(base, tmp_path, capsys):
    root = _copy(base, tmp_path / "old")
    c = sqlite3.connect(root / "atlas.db")  # a schema-1 file as an older lmscope wrote it
    c.executescript(
        __import__("lmscope.atlas.db", fromlist=["x"])._SCHEMA_V1
        + "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        "INSERT INTO schema_version VALUES (1);"
        "INSERT INTO dictionaries (hook, d_sae) VALUES ('blocks.0.resid_post', 64);"
        "INSERT INTO explanations (dictionary, idx, method, text) VALUES (1, 3, 'hand', 'kept');"
    )
    c.close()
    for readonly in (True, False):
        with pytest.raises(UserError, match="older lmscope .*schema 1.*--force"):
            AtlasDB(root / "atlas.db", readonly=readonly)
    assert main(["feature", str(root), f"{HOOKS[0]}/3", "--color", "never"]) == 2
    assert "older lmscope" in capsys.readouterr().err
    build_atlas(_cfg(root, base[1], tokens=4 * CTX), progress=False, lm=base[2])
    with AtlasDB(root / "atlas.db", readonly=True) as db:
        assert db.feature(HOOKS[0], PLANTED).top
        assert [e.text for e in db.feature("blocks.0.resid_post", 3).explanations] == ["kept"]


def test_planted_feature_top_examples_highlight_the_word(built):
    with AtlasDB(built[0] / "atlas.db", readonly=True) as db:
        for hook in HOOKS:
            p = db.feature(hook, PLANTED)
            assert len(p.top) == K
            for e in p.top:
                assert e.tokens[e.position] == PLANTED_WORD
                assert all((a > 0) == (t == PLANTED_WORD) for t, a in zip(e.tokens, e.acts))
            assert p.negatives and all(PLANTED_WORD not in e.tokens for e in p.negatives)


def test_logit_effects_exact(built, dense):
    from lmscope.atlas.logits import final_norm_gain

    _, _, dicts, lm = dense
    W_U = lm.model.get_output_embeddings().weight.detach().float()
    g = final_norm_gain(lm)
    with AtlasDB(built[0] / "atlas.db", readonly=True) as db:
        for hook, d in dicts.items():
            eff = (d.W_dec.detach() * g) @ W_U.t()  # [F, vocab]
            for f in (0, PLANTED, d.cfg.d_sae - 1):
                p = db.feature(hook, f)
                assert [x.token_id for x in p.promoted] == eff[f].topk(10).indices.tolist()
                assert [x.token_id for x in p.suppressed] == eff[f].topk(
                    10, largest=False
                ).indices.tolist()
                assert p.promoted[0].value == pytest.approx(float(eff[f].max()), rel=1e-5)


def test_logit_effects_bf16_screen_equals_float32():
    """A bfloat16 unembedding is screened in bf16, then the candidates are scored in float32: the
    same top-k ids and float32 values as the full float32 product (reference by hand)."""
    from types import SimpleNamespace

    from lmscope.atlas import logits as Lg

    gen = torch.Generator().manual_seed(0)
    W_U = torch.randn(600, 16, generator=gen).bfloat16()
    W_dec = torch.randn(40, 16, generator=gen)
    emb = torch.nn.Embedding(600, 16).bfloat16()
    emb.weight.data.copy_(W_U)
    model = SimpleNamespace(get_output_embeddings=lambda: emb)
    lm = SimpleNamespace(model=model, hooks=SimpleNamespace())
    eff = Lg.logit_effects(lm, W_dec, k=5)
    ref = W_dec @ W_U.float().t()  # [40, 600] the float32 reference
    assert Lg.SCREEN < 600  # the screened path ran
    assert eff.promoted_ids.tolist() == ref.topk(5, 1).indices.tolist()
    assert eff.suppressed_ids.tolist() == ref.topk(5, 1, largest=False).indices.tolist()
    assert torch.allclose(eff.promoted, ref.topk(5, 1).values, atol=1e-5)


def test_memory_is_independent_of_token_count():
    F, B, Pn = 300, 4, 16
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for n_batches in (1, 20):
        s = P.ProfileState.empty(F, top_k=8, window=8, samples=3, negatives=2)
        for i in range(n_batches):
            acts = torch.relu(torch.randn(B, Pn, F, generator=gen) - 1.5)
            toks = torch.randint(0, 100, (B, Pn), generator=gen)
            valid = torch.ones(B, Pn, dtype=torch.bool)
            update(s, acts, toks, valid, torch.arange(B * Pn).view(B, Pn) + i * B * Pn)
        sizes.append({k: tuple(v.shape) for k, v in s.tensors().items()})
        assert int(s.n_tokens) == n_batches * B * Pn
    assert sizes[0] == sizes[1]


def update(*a, **kw):
    return P.update(*a, **kw)


def test_merge_equals_one_state():
    """Two states on disjoint halves merge into exactly the state of the whole (any split)."""
    F, B, Pn = 50, 3, 12
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.relu(torch.randn(B, Pn, F, generator=gen) - 1),
            torch.randint(0, 60, (B, Pn), generator=gen),
        )
        for _ in range(6)
    ]
    mk = lambda: P.ProfileState.empty(F, top_k=4, window=6, samples=2, negatives=2)  # noqa: E731
    valid = torch.ones(B, Pn, dtype=torch.bool)
    ids = lambda i: torch.arange(B * Pn).view(B, Pn) + i * B * Pn  # noqa: E731
    whole, a, b = mk(), mk(), mk()
    for i, (x, t) in enumerate(data):
        update(whole, x, t, valid, ids(i))
        update(a if i % 2 else b, x, t, valid, ids(i))
    m = P.merge(a, b)
    # reservoir slots are unordered while streaming; canonical() puts each in key order
    for k, v in P.canonical(whole).tensors().items():
        w = m.tensors()[k]
        assert torch.allclose(v, w) if v.dtype == torch.float64 else torch.equal(v, w), k


# --- resume ---------------------------------------------------------------------------------
def _dump(db_path: Path) -> dict:
    c = sqlite3.connect(db_path)
    out = {
        "features": [
            r[:3] + (round(r[3], 9),) + r[4:]
            for r in c.execute(
                "SELECT idx, fires, max_act, mean_act, histogram FROM features ORDER BY "
                "dictionary, idx"
            )
        ],
        "examples": c.execute(
            "SELECT dictionary, idx, kind, n, buckets, scores, token_index, acts "
            "FROM example_sets ORDER BY dictionary, idx, kind"
        ).fetchall(),
        "contexts": c.execute("SELECT * FROM contexts ORDER BY id").fetchall(),
        "logits": c.execute(
            "SELECT * FROM logit_effects ORDER BY dictionary, idx, kind, rank"
        ).fetchall(),
    }
    c.close()
    return out


def test_resume_equals_uninterrupted(base, built, tmp_path):
    from lmscope.dictionaries.sources import iter_contexts

    root = _copy(base, tmp_path / "a")
    lm = base[2]
    seen = {"n": 0}

    def interrupted():
        for c in iter_contexts(lm, str(base[1]), ctx_len=CTX):
            if seen["n"] == 13:
                raise KeyboardInterrupt
            seen["n"] += 1
            yield c

    cfg = _cfg(root, base[1], checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(cfg, progress=False, lm=lm, contexts=interrupted)
    assert not (root / "atlas.db").exists() and "profile" not in AtlasLayout(root).read()
    ckpt = torch.load(root / "build" / "profile.rank0.pt", weights_only=True)
    assert ckpt["done_local"] == 13 - 13 % BATCH  # the partial batch is redone
    build_atlas(cfg, progress=False, lm=lm)
    assert _dump(root / "atlas.db") == _dump(built[0] / "atlas.db")
    assert not (root / "build").exists()
    assert AtlasLayout(root).read()["profile"]["tokens"] == built[1].n_tokens
    again = build_atlas(cfg, progress=False, lm=lm)  # completed: not redone
    assert again.skipped


def test_rebuild_keeps_explanations_and_needs_force_for_other_settings(base, tmp_path):
    root = _copy(base, tmp_path / "a")
    lm = base[2]
    build_atlas(_cfg(root, base[1], tokens=256), progress=False, lm=lm)
    with AtlasDB(root / "atlas.db") as db:
        db.add_explanation(HOOKS[0], PLANTED, "the word horse", method="manual")
    assert (
        main(
            [
                "atlas",
                "build",
                str(root),
                "--corpus",
                str(base[1]),
                "--tokens",
                "512",
                "--ctx-len",
                str(CTX),
            ]
        )
        == 2
    )
    build_atlas(_cfg(root, base[1], tokens=512, force=True), progress=False, lm=lm)
    with AtlasDB(root / "atlas.db", readonly=True) as db:
        assert [e.text for e in db.explanations(HOOKS[0], PLANTED)] == ["the word horse"]
        assert db.feature(HOOKS[0], PLANTED).top


# --- the database ---------------------------------------------------------------------------
def test_explanations_scores_labels_and_fts(base, tmp_path):
    root = _copy(base, tmp_path / "a")
    build_atlas(_cfg(root, base[1], tokens=256), progress=False, lm=base[2])
    with AtlasDB.open(root / "atlas.db") as db:
        e1 = db.add_explanation(
            HOOKS[0], PLANTED, "mentions of a horse galloping", method="delphi", version="2"
        )
        e2 = db.add_explanation(
            HOOKS[0], PLANTED, "farm animals", method="oai", details={"model": "x"}
        )
        db.add_score(
            e1, scorer="detection", metric="balanced_accuracy", value=0.9, n_pos=10, n_neg=10
        )
        db.add_score(
            e1, scorer="fuzzing", metric="balanced_accuracy", value=0.7, n_pos=10, n_neg=10
        )
        db.set_label(HOOKS[1], 3, "rivers and water")
        with pytest.raises(UserError):
            db.add_score(999, scorer="x", metric="y", value=1.0)
        with pytest.raises(UserError):
            db.add_explanation(HOOKS[0], 10_000, "x", method="m")
    with AtlasDB.open(root / "atlas.db", readonly=True) as db:
        exps = db.explanations(HOOKS[0], PLANTED)
        assert [(e.id, e.method, e.version) for e in exps] == [
            (e1, "delphi", "2"),
            (e2, "oai", "1"),
        ]
        assert [s.scorer for s in exps[0].scores] == ["detection", "fuzzing"] and exps[
            1
        ].details == {"model": "x"}
        hits = db.search_labels("horse")
        assert [(h.hook, h.feature, h.source) for h in hits] == [(HOOKS[0], PLANTED, "explanation")]
        assert db.search_labels("gallop")[0].feature == PLANTED  # prefix match
        assert [(h.hook, h.feature) for h in db.search_labels("water")] == [(HOOKS[1], 3)]
        assert (
            db.label(HOOKS[1], 3) == "rivers and water"
            and db.feature(HOOKS[1], 3).label == "rivers and water"
        )
        assert db.search_labels("zebra") == [] and db.search_labels("  ") == []
        v = db.conn.execute("SELECT version FROM schema_version").fetchone()[0]
        assert (
            v == SCHEMA_VERSION == 2
            and db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        )
    # a second writer holding the lock: one clear line, nothing lost
    other = sqlite3.connect(root / "atlas.db")
    other.execute("BEGIN IMMEDIATE")
    with AtlasDB(root / "atlas.db", timeout=0.2) as db:
        with pytest.raises(UserError, match="locked"):
            db.add_explanation(HOOKS[0], 1, "x", method="m")
        other.rollback()
        db.add_explanation(HOOKS[0], 1, "x", method="m")
        assert len(db.explanations(HOOKS[0], PLANTED)) == 2
    other.close()


_READER = """
import sys, json
from lmscope.atlas.db import SCHEMA_VERSION, AtlasDB
db = AtlasDB(sys.argv[1], readonly=True)
p = db.feature(sys.argv[2], int(sys.argv[3]))
hits = len(db.search_labels("horse", limit=1000))
print(json.dumps({"n_exp": len(p.explanations), "top": len(p.top), "hits": hits}))
"""


def test_concurrent_reader_while_writing(base, tmp_path):
    """A second process reads (and is not blocked) while this one holds a write transaction."""
    root = _copy(base, tmp_path / "a")
    build_atlas(_cfg(root, base[1], tokens=256), progress=False, lm=base[2])
    db = AtlasDB(root / "atlas.db")
    db.add_explanation(HOOKS[0], PLANTED, "horse one", method="m")
    db.conn.execute("BEGIN IMMEDIATE")
    for i in range(200):  # an open, uncommitted write transaction
        db.conn.execute(
            "INSERT INTO explanations (dictionary, idx, method, version, text) VALUES (1, ?, 'm', "
            "'1', ?)",
            (PLANTED, f"horse {i}"),
        )
        db.conn.execute(
            "INSERT INTO search VALUES (?, ?, ?, 'explanation', NULL)",
            (f"horse {i}", HOOKS[0], PLANTED),
        )

    def read():
        argv = [sys.executable, "-c", _READER, str(root / "atlas.db"), HOOKS[0], str(PLANTED)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    during = read()
    assert during == {"n_exp": 1, "top": K, "hits": 1}  # the last committed snapshot, no waiting
    db.conn.commit()
    assert read() == {"n_exp": 201, "top": K, "hits": 201}
    db.close()


# --- search and export ------------------------------------------------------------------------
def test_search_text_finds_planted_feature(built):
    from lmscope.atlas.search import search_text

    hits = search_text(str(built[0]), "the horse ran in the field", limit=5)
    assert {(h.hook, h.feature) for h in hits[:2]} == {(h, PLANTED) for h in HOOKS}
    assert all(h.token == PLANTED_WORD for h in hits[:2]) and hits[0].relative is not None


def test_export_formats(built, tmp_path):
    import pyarrow.parquet as pq

    from lmscope.dictionaries import load_dictionary

    root = str(built[0])
    assert main(["export", root, "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    feats = pq.read_table(tmp_path / "pq" / "features.parquet").to_pylist()
    ex = pq.read_table(tmp_path / "pq" / "examples.parquet").to_pylist()
    with AtlasDB(built[0] / "atlas.db", readonly=True) as db:
        p = db.feature(HOOKS[1], PLANTED)
        row = next(r for r in feats if r["hook"] == HOOKS[1] and r["idx"] == PLANTED)
        assert row["max_act"] == p.max_act and row["fires"] == p.fires
        tops = sorted(
            (r for r in ex if r["hook"] == HOOKS[1] and r["idx"] == PLANTED and r["kind"] == "top"),
            key=lambda r: r["rank"],
        )
        assert [json.loads(r["tokens"]) for r in tops] == [e.tokens for e in p.top]
        assert len(feats) == sum(d.d_sae for d in db.dictionaries())

    assert (
        main(["export", root, "--format", "neuronpedia-json", "--out", str(tmp_path / "np")]) == 0
    )
    batch = json.loads((tmp_path / "np" / HOOKS[0] / "batch-0.json").read_text())
    assert {"model_id", "layer", "sae_set", "features"} <= set(batch) and batch["layer"] == "0"
    f7 = batch["features"][PLANTED]
    assert {
        "feature_index",
        "frac_nonzero",
        "pos_str",
        "pos_values",
        "neg_str",
        "neg_values",
        "freq_hist_data_bar_values",
        "freq_hist_data_bar_heights",
        "activations",
    } <= set(f7)
    assert len(f7["freq_hist_data_bar_values"]) == len(f7["freq_hist_data_bar_heights"])
    top = [a for a in f7["activations"] if a["bin_min"] == -1]
    assert top and all(a["tokens"][a["qualifying_token_index"]] == PLANTED_WORD for a in top)

    assert main(["export", root, "--format", "saelens", "--out", str(tmp_path / "sl")]) == 0
    d = load_dictionary(tmp_path / "sl" / HOOKS[0])
    assert d.cfg.d_sae == 64 and (tmp_path / "sl" / HOOKS[0] / "sparsity.safetensors").is_file()
    assert (
        main(["export", root, "--format", "saelens", "--out", str(tmp_path / "sl")]) == 2
    )  # not empty


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_feature_and_search(built, capsys):
    root = str(built[0])
    assert main(["feature", root, f"{HOOKS[0]}/{PLANTED}", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert f"[{PLANTED_WORD} " in out and "density" in out and "promotes:" in out
    assert main(["feature", root, f"{HOOKS[0]}/{PLANTED}", "--color", "always"]) == 0
    assert "\x1b[48;5;" in capsys.readouterr().out
    assert main(["feature", root, f"{HOOKS[0]}/{PLANTED}", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["id"] == f"{HOOKS[0]}/{PLANTED}" and len(d["profile"]["top"]) == K
    hist = d["profile"]["histogram"]  # the same FeaturePage JSON as the viewer's /api/feature
    assert (
        sum(hist["counts"]) == d["profile"]["fires"]
        and len(hist["edges"]) == len(hist["counts"]) + 1
    )
    assert main(["search", root, "the horse", "--by", "text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"][0]["feature"] == PLANTED


@pytest.mark.parametrize(
    "argv",
    [
        ["feature", "{root}", "blocks.0.resid_post"],  # no /INDEX
        ["feature", "{root}", "blocks.0.resid_pst/3"],  # unknown dictionary
        ["feature", "{root}", "blocks.0.resid_post/64"],  # out of range
        ["feature", "{root}/nope", "blocks.0.resid_post/1"],  # not an atlas
        ["search", "{root}", "", "--by", "text"],  # empty text
        ["export", "{root}", "--format", "parquet", "--out", "{root}"],  # non-empty out
        ["atlas", "build", "{root}", "--corpus", "/nonexistent.txt", "--force"],
        ["atlas", "build", "{root}", "--tokens", "0"],
        ["atlas", "build", "{root}", "--hooks", "blocks.7.mlp_out", "--force"],
    ],
)
def test_cli_bad_inputs_exit_2(built, argv, capsys):
    root = str(built[0])
    assert main([a.replace("{root}", root) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmscope: error:") and err.count("\n") == 1


def test_corrupt_db_and_other_model(base, tmp_path, capsys, tiny_model_dir):
    root = _copy(base, tmp_path / "a")
    (root / "atlas.db").write_bytes(b"this is not a database" * 100)
    assert main(["feature", str(root), f"{HOOKS[0]}/1"]) == 2
    assert "corrupt" in capsys.readouterr().err
    # an atlas whose dictionaries were trained on another model (different width)
    m16 = tiny_model_dir("llama", n_layers=2, d_model=16)
    root2 = _copy(base, tmp_path / "b")
    m = json.loads((root2 / "atlas.json").read_text())
    m["model"] = str(m16)
    (root2 / "atlas.json").write_text(json.dumps(m))
    assert (
        main(
            [
                "atlas",
                "build",
                str(root2),
                "--corpus",
                str(base[1]),
                "--tokens",
                "64",
                "--ctx-len",
                "32",
            ]
        )
        == 2
    )
    assert "another model" in capsys.readouterr().err


# --- scale out ------------------------------------------------------------------------------------
@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed next to python",
)
def test_torchrun_two_processes_equal_one(base, tmp_path):
    """`torchrun --nproc-per-node 2 -m lmscope atlas build` == 1 process on the same tokens
    (exact)."""
    import os
    import socket

    one = _copy(base, tmp_path / "one")
    two = _copy(base, tmp_path / "two")
    build_atlas(_cfg(one, base[1], tokens=512, batch_size=1), progress=False, lm=base[2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun,
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "lmscope",
        "atlas",
        "build",
        str(two),
        "--corpus",
        str(base[1]),
        "--tokens",
        "512",
        "--ctx-len",
        str(CTX),
        "--batch-size",
        "1",
        "--top-k",
        str(K),
        "--ctx-window",
        "8",
        "--samples",
        "3",
        "--negatives",
        "2",
        "--json",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # torchrun's own traceback fills the tail: show the ranks' lines (the cause) first
    ranks = [ln for ln in p.stderr.splitlines() if "torch/distributed/elastic" not in ln]
    assert p.returncode == 0, "\n".join(ranks[:40]) + "\n...\n" + p.stderr[-1500:]
    a, b = _dump(one / "atlas.db"), _dump(two / "atlas.db")
    assert a["examples"] == b["examples"] and a["logits"] == b["logits"]
    assert [r[:3] + r[4:] for r in a["features"]] == [r[:3] + r[4:] for r in b["features"]]
    for x, y in zip(a["features"], b["features"]):  # float64 sums in another order
        assert x[3] == pytest.approx(y[3], rel=1e-9, abs=1e-12)


def test_exactly_enough_contexts_is_complete(base, built, tmp_path):
    """A context source with exactly tokens/ctx_len contexts builds (== the corpus build); one
    fewer is refused."""
    import itertools

    from lmscope.dictionaries.sources import iter_contexts

    lm, n_ctx = base[2], TOKENS // CTX

    def exact(n):
        return lambda: itertools.islice(iter_contexts(lm, str(base[1]), ctx_len=CTX), n)

    root = _copy(base, tmp_path / "exact")
    build_atlas(_cfg(root, base[1]), progress=False, lm=lm, contexts=exact(n_ctx))
    assert _dump(root / "atlas.db") == _dump(built[0] / "atlas.db")
    short = _copy(base, tmp_path / "short")
    with pytest.raises(UserError, match="fewer than"):
        build_atlas(_cfg(short, base[1]), progress=False, lm=lm, contexts=exact(n_ctx - 1))


def test_build_help_renders(capsys):
    """argparse %-formats help strings: a '%' in a BuildConfig docstring crashed --help."""
    with pytest.raises(SystemExit) as e:
        main(["atlas", "build", "--help"])
    assert e.value.code == 0 and "--samples" in capsys.readouterr().out

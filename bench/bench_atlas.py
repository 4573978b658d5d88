"""Feature-profile throughput of `lmscope atlas build` (feature x tokens per second).

    .venv/bin/python bench/bench_atlas.py                       # 1024 and 4608 features x 8,192
    tokens
    .venv/bin/python bench/bench_atlas.py --features 1024 --tokens 8192

On the default model (SmolLM2-135M, blocks.15.resid_post, d_model 576) with a TopK dictionary
(k=32; random weights initialized from the data's scale: throughput does not depend on what the
features mean, only on width and sparsity). Two numbers per width:

- profile pass: dictionary encode + `profile.update` (all accumulators) on activations captured
  beforehand, i.e. the work a profiler adds on top of the model forward;
- end to end: the real `build_atlas` (model forward, encode, update, logit effects, DB write in
  one transaction), as a user runs it.

SAEDashboard's published reference (shared/ANCHORS.md): ~423k feature-tokens/s for 1024
features x 8,192 tokens. Peak RSS from resource.getrusage.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

HOOK = "blocks.15.resid_post"
CTX = 128


def make_atlas(root: Path, lm, d_sae: int, sample: torch.Tensor) -> None:
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.layout import AtlasLayout

    if root.exists():
        shutil.rmtree(root)
    d = build(
        DictionaryConfig(
            d_in=lm.d_model,
            d_sae=d_sae,
            arch="topk",
            k=32,
            hook_name=HOOK,
            model_name="smollm2-135m",
            seed=0,
        )
    )
    d.init_from_data(sample)
    layout = AtlasLayout(root)
    d.save(layout.dictionary_dir(HOOK))
    layout.add_dictionary(HOOK, model="smollm2-135m", arch="topk", d_sae=d_sae)


def db_scale(n_features: int, path: Path, examples_per_feature: int = 2) -> dict:
    """A synthetic atlas.db of n_features (random stats, a label each, a few examples): lookup and
    label-search latency at that size."""
    import random

    from lmscope.atlas.db import AtlasDB

    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            p.unlink()
    rnd = random.Random(0)
    # Labels of 3 words from a 20k-word vocabulary (a query word matches ~n_features * 3 / 20k
    # labels);
    # common words make FTS ranking O(matches): see docs/notes/atlas.md.
    words = [f"w{j}x" for j in range(20_000)]
    t0 = time.time()
    db = AtlasDB(path)
    feats = (
        (
            i,
            rnd.random() * 1e-2,
            rnd.randrange(1000),
            rnd.random() * 10,
            rnd.random(),
            rnd.random(),
            "{}",
        )
        for i in range(n_features)
    )
    import numpy as np

    # schema 2: one context of 16 tokens, 3 vocab entries; each feature's top examples packed
    db.write_corpus(16, 16, {0: np.arange(16) % 3}, ["the", "horse", "ran"])
    E = examples_per_feature
    ex = (
        (
            i,
            "top",
            E,
            None,
            np.ones(E, "<f4").tobytes(),
            np.arange(E, dtype="<i8").tobytes(),
            np.zeros((E, 16), "<f2").tobytes(),
        )  # fmt: skip
        for i in range(n_features)
    )
    db.write_dictionary_profiles(
        HOOK, {"d_sae": n_features, "arch": "topk"}, feats, ex, [], commit=False
    )
    db.conn.executemany(
        "UPDATE features SET label = ? WHERE dictionary = 1 AND idx = ?",
        (
            (f"{rnd.choice(words)} {rnd.choice(words)} {rnd.choice(words)}", i)
            for i in range(n_features)
        ),
    )
    db.conn.execute("INSERT INTO search SELECT label, ?, idx, 'label', NULL FROM features", (HOOK,))
    db.conn.commit()
    t_build = time.time() - t0
    db.close()
    db = AtlasDB(path, readonly=True)
    idx = [rnd.randrange(n_features) for _ in range(200)]
    t0 = time.time()
    for i in idx:
        db.feature(HOOK, i)
    t_lookup = (time.time() - t0) / len(idx)
    t0 = time.time()
    queries = words[:50]
    for w in queries:
        db.search_labels(w, limit=20)
    t_search = (time.time() - t0) / len(queries)
    db.close()
    return {
        "features": n_features,
        "build_s": round(t_build, 1),
        "db_mb": round(path.stat().st_size / 2**20),
        "feature_lookup_ms": round(t_lookup * 1000, 2),
        "label_search_ms": round(t_search * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", default="1024,4608", help="dictionary widths (comma-separated)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=16, help="contexts per model pass")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument(
        "--db-scale",
        type=int,
        default=0,
        help="instead: build a synthetic atlas.db of this many features and time lookup/search",
    )
    args = ap.parse_args()
    if args.db_scale:
        print(
            json.dumps(db_scale(args.db_scale, Path("/tmp/lmscope-bench-atlas-scale.db")), indent=2)
        )
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench_train_step import corpus_text

    from lmscope.atlas.build import BuildConfig, build_atlas
    from lmscope.atlas.profile import ProfileState, update
    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.sources import iter_contexts
    from lmscope.models.load import load_model
    from lmscope.models.runtime import run
    from lmscope.models.tokens import token_mask

    lm = load_model("smollm2-135m")
    corpus = Path("/tmp/lmscope-bench-atlas-corpus.txt")
    if not corpus.exists():
        corpus.write_text(corpus_text())
    n_ctx = args.tokens // CTX
    ctxs = []
    for i, c in enumerate(iter_contexts(lm, str(corpus), ctx_len=CTX)):
        if i >= n_ctx:
            break
        ctxs.append(c)
    tokens = torch.stack(ctxs)  # [n_ctx, CTX]
    t0 = time.time()
    acts = [
        run(lm, tokens[s : s + args.batch_size], capture=[HOOK]).acts[HOOK]
        for s in range(0, n_ctx, args.batch_size)
    ]  # [b, CTX, d_model] each
    t_model = time.time() - t0
    valid = token_mask(lm, tokens)
    n_valid = int(valid.sum())
    sample = torch.cat(acts).reshape(-1, lm.d_model)[valid.reshape(-1)][:4096]

    results = {
        "model": "smollm2-135m",
        "hook": HOOK,
        "tokens": int(tokens.numel()),
        "valid_tokens": n_valid,
        "model_forward_s": round(t_model, 2),
        "threads": torch.get_num_threads(),
        "widths": [],
    }
    for F in [int(x) for x in args.features.split(",")]:
        root = Path(f"/tmp/lmscope-bench-atlas-{F}")
        make_atlas(root, lm, F, sample)
        d = load_dictionary(root / "dictionaries" / HOOK)
        state = ProfileState.empty(F, top_k=20, window=16, samples=4, negatives=8)
        t0 = time.time()
        for j, a in enumerate(acts):
            s = j * args.batch_size
            t = tokens[s : s + args.batch_size]
            with torch.inference_mode():
                f = d.encode(a.reshape(-1, a.shape[-1]).float()).reshape(*t.shape, F)
            ids = torch.arange(s, s + t.shape[0])[:, None] * CTX + torch.arange(CTX)
            update(state, f, t, valid[s : s + t.shape[0]], ids)
        t_profile = time.time() - t0
        t0 = time.time()
        build_atlas(
            BuildConfig(
                atlas=str(root),
                corpus=str(corpus),
                tokens=args.tokens,
                ctx_len=CTX,
                batch_size=args.batch_size,
                force=True,
            ),
            progress=False,
            lm=lm,
        )
        t_e2e = time.time() - t0
        row = {
            "features": F,
            "profile_pass_s": round(t_profile, 2),
            "profile_feature_tokens_per_s": round(F * n_valid / t_profile),
            "end_to_end_s": round(t_e2e, 2),
            "end_to_end_feature_tokens_per_s": round(F * n_valid / t_e2e),
            "state_mb": round(state.nbytes() / 2**20, 1),
            "db_mb": round((root / "atlas.db").stat().st_size / 2**20, 1),
        }
        results["widths"].append(row)
        print(json.dumps(row), flush=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

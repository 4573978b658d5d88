"""`lmscope atlas build`: profile every feature of every dictionary in one pass over a corpus.

    build_atlas(BuildConfig(atlas="atlas/", corpus="corpus.txt", tokens=1_000_000))
    torchrun --nproc-per-node 4 -m lmscope atlas build atlas/ --corpus C --tokens 1M

Per batch of contexts: ONE model forward capturing every dictionary's input hook (stopping
after the deepest), each dictionary encodes its activations, and `profile.update` folds the
result into that dictionary's bounded accumulators. Global context i goes to rank i % world, so
any world size sees the same tokens; at the end rank 0 gathers the states and merges them
exactly (`profile.merge`). Checkpoints of the accumulators are written atomically every
`checkpoint_every` batches (and on Ctrl-C nothing is lost but the batches since the last one);
rerunning the same command resumes. The database is filled at the end in one transaction, the
manifest entry comes last, and a completed build is not redone without --force.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from ..errors import UserError
from ..layout import AtlasLayout, write_json_atomic
from .profile import ProfileState, merge, update

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


@dataclass(frozen=True)
class BuildConfig:
    atlas: str
    """atlas folder (with dictionaries and atlas.json)"""
    corpus: str = "default"
    """text corpus: a .txt file or folder, or a corpus name known to lmscope.capture.corpus"""
    tokens: int = 1_000_000
    """tokens to profile on (rounded up to whole contexts)"""
    top_k: int = 20
    """top activating examples kept per feature"""
    ctx_window: int = 16
    """tokens shown around each example's peak (3/4 before it)"""
    ctx_len: int = 128
    """tokens per context (BOS first)"""
    batch_size: int = 16
    """contexts per model pass (per process)"""
    samples: int = 16
    """examples kept per activation bucket (octave) per feature (16: with the 20 top examples, the
    explain split leaves a median 23 activating TEST windows per feature on the default run, >= 20
    for 84 percent of features; 4 left 12, none >= 20; bench/held_out_counts.py)"""
    negatives: int = 40
    """non-activating contexts kept per feature (for explanation scoring; 40 leave a median 23 in
    the TEST part, >= 20 for every feature of the default run; 8 left 5)"""
    hooks: str = ""
    """only these dictionaries (comma-separated names or globs, e.g. 'blocks.1*.resid_post'); empty
    = all"""
    seed: int = 0
    """seed of the sampling keys"""
    checkpoint_every: int = 50
    """batches between resumable checkpoints"""
    force: bool = False
    """rebuild a completed atlas build / restart an in-progress build with other settings"""
    device: str = "cpu"
    """torch device"""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the model weights"""

    def __post_init__(self) -> None:
        for name in ("tokens", "top_k", "ctx_window", "ctx_len", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.samples < 0 or self.negatives < 0:
            raise ValueError("--samples and --negatives must be >= 0")
        if self.ctx_len < 2:
            raise ValueError("--ctx-len must be >= 2")

    def identity(self, world_size: int) -> dict:
        """What a resume must agree on."""
        d = asdict(self)
        for k in ("atlas", "force", "device", "checkpoint_every", "model_dtype"):
            d.pop(k)
        d["world_size"] = world_size
        return d


@dataclass
class BuildResult:
    atlas: str
    hooks: list[str]
    n_tokens: int
    seconds: float
    skipped: bool = False
    """True when an identical completed build was found (nothing done)"""
    state_bytes: int = 0
    """bytes of the accumulators (independent of the token count)"""


def _state_path(layout: AtlasLayout, rank: int) -> Path:
    return layout.root / "build" / f"profile.rank{rank}.pt"


def _save_state(path: Path, payload: dict) -> None:
    from ..dictionaries.checkpoint import save_torch_atomic

    save_torch_atomic(payload, path)  # temp + rename; a full disk is a plain OSError(ENOSPC)


def _contexts(lm: LanguageModel, cfg: BuildConfig) -> Iterator[Tensor]:
    from ..dictionaries.sources import iter_contexts

    return iter_contexts(lm, cfg.corpus, ctx_len=cfg.ctx_len, seed=cfg.seed)


def build_atlas(
    cfg: BuildConfig,
    *,
    progress: bool = True,
    lm: LanguageModel | None = None,
    contexts: Callable[[], Iterator[Tensor]] | None = None,
) -> BuildResult:
    """Run (or resume) the profile pass and write the atlas DB. `contexts` (tests) replaces the
    corpus."""
    from .. import dist
    from ..dictionaries.folder import open_dictionaries
    from ..models.runtime import run
    from ..models.tokens import token_mask
    from .db import AtlasDB

    t0 = time.time()
    layout = AtlasLayout(cfg.atlas)
    layout.read()  # a missing or damaged atlas fails before any work
    info = dist.setup(cfg.device)
    device = dist.device_for(info, cfg.device) if info.enabled else torch.device(cfg.device)
    identity = cfg.identity(info.world_size)

    if layout.db_path.exists() and not cfg.force:
        with AtlasDB(layout.db_path, upgrade=True) as db:
            done = db.meta().get("build")
        if done and done.get("identity") == identity:
            if info.is_main and progress:
                print(
                    f"lmscope: {layout.root} is already profiled with these settings; pass "
                    "--force to rebuild"
                )
            return BuildResult(
                str(layout.root), done.get("hooks", []), done.get("n_tokens", 0), 0.0, skipped=True
            )
        if done:
            raise UserError(
                f"{layout.root} already has a completed profile with other settings; "
                "pass --force to replace it"
            )

    _, lm, dicts = open_dictionaries(
        layout.root, hooks=cfg.hooks, dtype=cfg.model_dtype, device=device, lm=lm
    )
    capture = sorted({d.cfg.hook_name or h for h, d in dicts.items()})

    n_ctx = math.ceil(cfg.tokens / cfg.ctx_len)
    mine = len(range(info.rank, n_ctx, info.world_size))
    path = _state_path(layout, info.rank)
    states = {
        h: ProfileState.empty(
            d.cfg.d_sae,
            top_k=cfg.top_k,
            window=cfg.ctx_window,
            samples=cfg.samples,
            negatives=cfg.negatives,
        )
        for h, d in dicts.items()
    }
    done_local = 0
    profiled: dict[int, Tensor] = {}  # global index -> token ids: the examples' windows cut from it
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["identity"] != json.loads(json.dumps(identity)) and not cfg.force:
            raise UserError(
                f"an interrupted build with other settings is in {path.parent}; "
                "rerun it with the same flags or pass --force to restart"
            )
        if saved["identity"] == json.loads(json.dumps(identity)):
            done_local = saved["done_local"]
            states = {h: ProfileState(**t) for h, t in saved["states"].items()}
            profiled = dict(zip(saved["ctx_ids"].tolist(), saved["ctx_tokens"]))

    def my_contexts() -> Iterator[tuple[int, Tensor]]:
        it = contexts() if contexts is not None else _contexts(lm, cfg)
        seen = 0
        for i, ctx in enumerate(it):
            if i >= n_ctx:
                return
            seen = i + 1
            if i % info.world_size == info.rank:
                yield i, ctx
        if seen >= n_ctx:  # exactly n_ctx contexts: complete
            return
        raise UserError(
            f"the corpus {cfg.corpus!r} has fewer than {n_ctx} contexts of {cfg.ctx_len} tokens; "
            "pass a smaller --tokens or a larger corpus"
        )

    def save() -> None:
        _save_state(
            path,
            {
                "identity": identity,
                "done_local": done_local,
                "states": {h: s.tensors() for h, s in states.items()},
                **_pack_contexts(profiled),
            },
        )

    batch: list[tuple[int, Tensor]] = []
    n_batches = 0

    def flush() -> None:
        nonlocal done_local, n_batches
        idx = torch.tensor([i for i, _ in batch])  # [B] global context indices
        tokens = torch.stack([c for _, c in batch]).to(device)  # [B, P]
        if tokens.shape[1] != cfg.ctx_len:
            raise UserError(
                f"contexts have {tokens.shape[1]} tokens, expected --ctx-len {cfg.ctx_len}"
            )
        valid = token_mask(lm, tokens).cpu()
        for i, c in batch:
            profiled[i] = c.to(torch.int32).cpu()
        ids = idx[:, None] * cfg.ctx_len + torch.arange(cfg.ctx_len)  # [B, P] global token ids
        acts = run(lm, tokens, capture=capture).acts
        with torch.inference_mode():
            for h, d in dicts.items():
                x = acts[d.cfg.hook_name or h]  # [B, P, d_in]
                f = d.encode(x.reshape(-1, x.shape[-1]).float()).reshape(
                    *tokens.shape, -1
                )  # [B, P, F]
                update(states[h], f.float().cpu(), tokens.cpu(), valid, ids, seed=cfg.seed)
        done_local += len(batch)
        n_batches += 1
        if bar is not None:
            bar.update(len(batch) * cfg.ctx_len)
        batch.clear()
        if n_batches % cfg.checkpoint_every == 0:
            save()

    stream = my_contexts()
    first = next(stream, None)  # a bad corpus fails here, before any progress bar or write
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=mine * cfg.ctx_len,
            initial=done_local * cfg.ctx_len,
            unit="tok",
            unit_scale=True,
            desc="atlas build",
            dynamic_ncols=True,
        )
    try:
        for j, (i, ctx) in enumerate(itertools.chain([first] if first else [], stream)):
            if j < done_local:
                continue  # resumed: already folded into the saved state
            batch.append((i, ctx))
            if len(batch) == cfg.batch_size:
                flush()
        if batch:
            flush()
    except KeyboardInterrupt:
        batch.clear()
        save()
        raise
    finally:
        if bar is not None:
            bar.close()
    if info.enabled:
        save()  # single process: saved only if writing the DB fails (below), not every time

    if info.enabled:
        import torch.distributed as td

        gathered = [None] * info.world_size if info.is_main else None
        td.gather_object(
            ({h: s.tensors() for h, s in states.items()}, _pack_contexts(profiled)), gathered, dst=0
        )
        if info.is_main:
            for other, ctx in gathered[1:]:
                states = {h: merge(states[h], ProfileState(**other[h])) for h in states}
                profiled.update(zip(ctx["ctx_ids"].tolist(), ctx["ctx_tokens"]))
    n_tokens = int(next(iter(states.values())).n_tokens) if states else 0
    state_bytes = sum(s.nbytes() for s in states.values())
    if info.is_main:
        try:
            _write_db(layout, lm, dicts, states, cfg, identity, profiled)
        except BaseException:
            if not info.enabled:
                save()  # nothing profiled is lost: rerunning the command resumes from here
            raise
        m = layout.read()
        m["profile"] = {
            "hooks": list(dicts),
            "tokens": n_tokens,
            "corpus": cfg.corpus,
            "top_k": cfg.top_k,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomic(layout.manifest_path, m)
    if info.enabled:
        dist.barrier()
    shutil.rmtree(path.parent, ignore_errors=True) if info.is_main else None
    return BuildResult(
        str(layout.root), list(dicts), n_tokens, time.time() - t0, state_bytes=state_bytes
    )


def _pack_contexts(contexts: dict[int, Tensor]) -> dict[str, Tensor]:
    ids = sorted(contexts)
    return {
        "ctx_ids": torch.tensor(ids, dtype=torch.int64),
        "ctx_tokens": torch.stack([contexts[i] for i in ids])
        if ids
        else torch.zeros(0, 0, dtype=torch.int32),
    }


def _blob(x) -> bytes:
    return x.tobytes()


def pack_examples(s: ProfileState) -> list[tuple]:
    """One dictionary's examples as example_sets rows (idx, kind, n, buckets, scores, token_index,
    acts): top by activation descending (ties: smaller token id), quantiles by bucket descending
    then sampling key, negatives by key; window acts as float16."""
    import numpy as np

    from .profile import _top_merge

    F, K = s.top_val.shape
    G, S = s.res_key.shape
    W = s.window
    o = _top_merge(s.top_val, s.top_id, K)  # [F, K] sorted; empty slots last
    t_val = s.top_val.gather(1, o).numpy().astype("<f4")
    t_id = s.top_id.gather(1, o).numpy().astype("<i8")
    t_act = s.top_act.gather(1, o[..., None].expand(F, K, W)).numpy().astype("<f2")
    t_n = (t_id >= 0).sum(1)
    r_o = s.res_key.argsort(dim=1, stable=True)  # keys are unique per bucket; empty last
    nb = G // F

    def by_bucket_desc(x):  # [G, S, ...] -> [F, nb * S, ...] with buckets descending
        return x.reshape(F, nb, S, *x.shape[2:]).flip(1).reshape(F, nb * S, *x.shape[2:])

    r_id = by_bucket_desc(s.res_id.gather(1, r_o)).numpy().astype("<i8")
    r_val = by_bucket_desc(s.res_val.gather(1, r_o)).numpy().astype("<f4")
    r_act = (
        by_bucket_desc(s.res_act.gather(1, r_o[..., None].expand(G, S, W))).numpy().astype("<f2")
    )
    r_b = np.broadcast_to(np.arange(nb)[::-1].repeat(S), (F, nb * S)).astype("i1")
    r_ok = r_id >= 0
    n_o = s.neg_key.argsort(dim=1, stable=True)
    n_id = s.neg_id.gather(1, n_o).numpy().astype("<i8")
    n_n = (n_id >= 0).sum(1)
    rows = []
    for f in range(F):
        n = int(t_n[f])
        if n:
            rows.append((f, "top", n, None, _blob(t_val[f, :n]), _blob(t_id[f, :n]),
                         _blob(t_act[f, :n])))  # fmt: skip
        m = r_ok[f]
        n = int(m.sum())
        if n:
            rows.append((f, "quantile", n, _blob(r_b[f][m]), _blob(r_val[f][m]),
                         _blob(r_id[f][m]), _blob(r_act[f][m])))  # fmt: skip
        n = int(n_n[f])
        if n:
            rows.append((f, "negative", n, None, None, _blob(n_id[f, :n]), None))
    return rows


def _write_db(
    layout: AtlasLayout,
    lm: LanguageModel,
    dicts: dict[str, SparseDictionary],
    states: dict,
    cfg: BuildConfig,
    identity: dict,
    contexts: dict[int, Tensor],
) -> None:
    from .db import AtlasDB
    from .histogram import encode_histogram
    from .logits import logit_effects
    from .profile import HIST_PER_OCTAVE, LOG2_LO

    vocab = lm.to_str_tokens(list(range(len(lm.tokenizer))))
    import sqlite3

    from .db import _db_error

    db = AtlasDB(layout.db_path, upgrade=True)
    try:
        try:
            db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # another writer holds the lock past the busy timeout
            raise UserError(
                _db_error(layout.db_path, e) + "; the profile is kept in the build checkpoint"
            ) from None
        db.write_corpus(
            cfg.ctx_len, cfg.ctx_window, {i: t.numpy() for i, t in contexts.items()}, vocab
        )
        for h, d in dicts.items():
            s = states[h]
            n = max(int(s.n_tokens), 1)
            feats, logits = [], []
            fires, sums = s.fires.tolist(), s.act_sum.tolist()
            maxes = s.max_act.tolist()
            for f in range(s.d_sae):
                hist = encode_histogram(s.hist[f], LOG2_LO, HIST_PER_OCTAVE)
                feats.append(
                    (
                        f,
                        fires[f] / n,
                        fires[f],
                        maxes[f],
                        sums[f] / n,
                        sums[f] / fires[f] if fires[f] else 0.0,
                        json.dumps(hist),
                    )
                )
            examples = pack_examples(s)
            from ..dictionaries.dictmath import decoder_rows

            eff = logit_effects(lm, decoder_rows(d))
            if eff is not None:
                for kind, ids_t, vals_t in (
                    ("promoted", eff.promoted_ids, eff.promoted),
                    ("suppressed", eff.suppressed_ids, eff.suppressed),
                ):
                    for f, row in enumerate(ids_t.tolist()):
                        for r, t in enumerate(row):
                            logits.append(
                                (
                                    f,
                                    kind,
                                    r,
                                    t,
                                    vocab[t] if t < len(vocab) else f"<{t}>",
                                    float(vals_t[f, r]),
                                )
                            )
            info = {
                "arch": d.cfg.arch,
                "d_sae": d.cfg.d_sae,
                "d_in": d.cfg.d_in,
                "n_tokens": int(s.n_tokens),
                "config": {
                    "hook_name": d.cfg.hook_name,
                    "out_hook_name": getattr(d.cfg, "out_hook_name", None),
                },
            }
            db.write_dictionary_profiles(h, info, feats, examples, logits, commit=False)
        db.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('build', ?)",
            (
                json.dumps(
                    {
                        "identity": identity,
                        "hooks": list(dicts),
                        "n_tokens": int(next(iter(states.values())).n_tokens),
                        "model": layout.read().get("model"),
                        "completed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                ),
            ),
        )
        db.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('model', ?)",
            (json.dumps(layout.read().get("model")),),
        )
        db.conn.commit()
    except BaseException:
        if db.conn.in_transaction:
            db.conn.rollback()
        raise
    finally:
        db.close()

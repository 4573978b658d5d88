"""Whole-model training: the learning-rate choice on held-out FVU, and the shared pass's speed.

    # LR: multiples of the Gao et al. default on a short run of a few layers' skip transcoders,
    # scored on held-out documents (the corpus's heldout split), never on the training loss
    python bench/bench_train_all.py lr --layers 3,11,19,27 --train-tokens 32768 --val-tokens 8192
    # speed: tokens/s of a bare forward vs forward + all 30 dictionaries' steps, same contexts
    python bench/bench_train_all.py speed --steps 3
    # side by side in one run: bare forward vs lmscope's shared pass vs sparsify training the
    # same 30 skip transcoders (same model folder, same token windows file, same settings),
    # then both tools' held-out FVU on the same held-out windows (needs sparsify's own venv,
    # SPARSIFY_PY below; a loaded machine: --threads 1 --clock cpu, a quiet one: the defaults)
    python bench/bench_train_all.py vs-sparsify --tokens 16384 --rounds 2
    # the same, with lmscope's step code of another commit beside the working tree's
    # (before/after of a change under the same load):
    mkdir -p /tmp/base && git archive <commit> lmscope | tar -x -C /tmp/base
    LMSCOPE_BASE_TREE=/tmp/base python bench/bench_train_all.py vs-sparsify ...

Writes bench/results/train_lr.json / train_speed*.json / train_vs_sparsify-<time>.json.
The machine is shared: report medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmscope.dictionaries.sources import TensorSource, iter_contexts
from lmscope.dictionaries.train_config import TrainConfig, default_lr, whole_model_defaults
from lmscope.dictionaries.trainer import train
from lmscope.models import load_model
from lmscope.models.runtime import run
from lmscope.models.tokens import token_mask

RESULTS = Path(__file__).resolve().parent / "results"


def capture(lm, hooks: list[str], n_tokens: int, split: str, model_batch: int = 16):
    """{hook: [n_tokens, d]} non-special-token activations of `split`, and each row's context."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    ctx_of: list[torch.Tensor] = []
    it = iter_contexts(lm, "default", ctx_len=128, split=split, seed=0)
    have, c = 0, 0
    while have < n_tokens:
        toks = torch.stack([next(it) for _ in range(model_batch)])
        with torch.no_grad():
            res = run(lm, toks, capture=hooks)
        keep = token_mask(lm, toks)
        for h in hooks:
            out[h].append(res.acts[h][keep].cpu())
        ctx_of.append((torch.arange(len(toks))[:, None] + c).expand_as(keep)[keep])
        c += len(toks)
        have += int(keep.sum())
    return {h: torch.cat(v)[:n_tokens] for h, v in out.items()}, torch.cat(ctx_of)[:n_tokens]


def pooled_fvu(pred: torch.Tensor, t: torch.Tensor) -> float:
    """sum of squared errors / sum of squared deviations from the target's mean (SAELens-style
    pooled FVU over all tokens and dimensions)."""
    return float((pred - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum())


def cmd_lr(a) -> None:
    lm = load_model("smollm2-135m", dtype=a.model_dtype)
    base = whole_model_defaults(lm)
    layers = [int(x) for x in a.layers.split(",")]
    hooks = [f"blocks.{L}.mlp_{s}" for L in layers for s in ("in", "out")]
    t0 = time.perf_counter()
    tr, _ = capture(lm, hooks, a.train_tokens, "train")
    va, va_ctx = capture(lm, hooks, a.val_tokens, "heldout")
    print(f"captured in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    d_sae = int(base.width)
    rows = []
    g = torch.Generator().manual_seed(0)
    n_ctx = int(va_ctx.max()) + 1
    boots = [torch.randint(0, n_ctx, (n_ctx,), generator=g) for _ in range(a.bootstrap)]
    for mult in [float(m) for m in a.mults.split(",")]:
        lr = mult * default_lr(d_sae)
        cfg = TrainConfig(
            **{
                **base.to_dict(),
                "hooks": ",".join(f"blocks.{L}.mlp_in" for L in layers),
                "tokens": a.train_tokens,
                "batch_size": a.batch_size,
                "lr": lr,
                "out": f"{a.scratch}/lr{mult:g}",
                "force": True,
                "progress": False,
                "checkpoint_every": 0,
            }
        )
        src = TensorSource(tr, batch_size=cfg.batch_size, seed=0)
        t1 = time.perf_counter()
        res = train(cfg, lm=lm, source=src)
        from lmscope.dictionaries import load_dictionary

        per_layer, sq_e, sq_v = {}, {}, {}
        for L in layers:
            sae = load_dictionary(res.dictionaries[f"blocks.{L}.mlp_in"])
            x, t = va[f"blocks.{L}.mlp_in"].float(), va[f"blocks.{L}.mlp_out"].float()
            with torch.no_grad():
                pred = sae(x)
            # per-context sums so the bootstrap resamples whole held-out contexts
            e = torch.zeros(n_ctx).index_add_(0, va_ctx, (pred - t).pow(2).sum(1))
            mu = t.mean(0)
            v = torch.zeros(n_ctx).index_add_(0, va_ctx, (t - mu).pow(2).sum(1))
            sq_e[L], sq_v[L] = e, v
            per_layer[L] = {
                "heldout_fvu": pooled_fvu(pred, t),
                "dead_frac": res.metrics[f"blocks.{L}.mlp_in"].dead_frac,
                "train_fvu": res.metrics[f"blocks.{L}.mlp_in"].fvu,
            }
        mean = statistics.mean(r["heldout_fvu"] for r in per_layer.values())
        bs = sorted(
            statistics.mean(float(sq_e[L][b].sum() / sq_v[L][b].sum()) for L in layers)
            for b in boots
        )
        ci = (bs[int(0.025 * len(bs))], bs[int(0.975 * len(bs)) - 1])
        rows.append(
            {
                "lr_mult": mult,
                "lr": lr,
                "mean_heldout_fvu": mean,
                "ci95": ci,
                "layers": per_layer,
                "seconds": time.perf_counter() - t1,
                "_boot": bs,
            }
        )
        print(
            f"lr x{mult:g} ({lr:.2e}): held-out FVU mean {mean:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]  "
            + "  ".join(
                f"L{L} {r['heldout_fvu']:.3f}/dead {r['dead_frac']:.0%}"
                for L, r in per_layer.items()
            ),
            flush=True,
        )
    for r in rows:
        r.pop("_boot")
    out = {
        "command": " ".join(sys.argv),
        "layers": layers,
        "train_tokens": a.train_tokens,
        "val_tokens": a.val_tokens,
        "val_contexts": n_ctx,
        "batch_size": a.batch_size,
        "config": base.to_dict(),
        "rows": rows,
        "best": min(rows, key=lambda r: r["mean_heldout_fvu"])["lr_mult"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_lr.json").write_text(json.dumps(out, indent=1))
    print(f"best on validation: x{out['best']:g}")


def cmd_speed(a) -> None:
    """Same contexts: bare forward (deepest hook only) vs forward capturing 60 hooks + steps."""
    from lmscope.dictionaries import trainer as T
    from lmscope.dictionaries.sources import StreamSource
    from lmscope.dictionaries.train_config import resolve_plan
    from lmscope.dist import DistInfo

    lm = load_model("smollm2-135m", dtype=a.model_dtype)
    cfg = TrainConfig(**{**whole_model_defaults(lm).to_dict(), "out": "/tmp/unused"})
    if a.dict_dtype:
        cfg = TrainConfig(**{**cfg.to_dict(), "dtype": a.dict_dtype})
    pairs = [(f"blocks.{L}.mlp_in", f"blocks.{L}.mlp_out") for L in range(lm.n_layers)]
    dims = {h: lm.hooks[h].d for h in lm.hooks.points}
    plan = resolve_plan(
        cfg, hooks=pairs, dims=dims, model=lm.name, world_size=1, source="s", fingerprint={}
    )
    n = cfg.batch_size
    src = StreamSource(
        lm, plan.hooks_needed, corpus="default", ctx_len=128, batch_size=n, buffer_mb=cfg.buffer_mb
    )
    it = iter_contexts(lm, "default", ctx_len=128)
    ctxs = torch.stack([next(it) for _ in range(n // 127 + 1)])
    fwd, full = [], []
    first = None
    for _ in range(a.steps):
        t = time.perf_counter()
        for i in range(0, len(ctxs), 16):
            with torch.no_grad():
                run(lm, ctxs[i : i + 16], capture=[plan.hooks_needed[-1]])
        fwd.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        batch = src._activations(list(ctxs))
        batch = {h: v[:n] for h, v in batch.items()}
        tc = time.perf_counter() - t
        if first is None:
            first = batch
            slots = [
                T._make_slot(
                    cfg,
                    p,
                    lm.name,
                    DistInfo(),
                    False,
                    torch.device("cpu"),
                    T._slot_batch(p, first),
                    n,
                )
                for p in plan.dictionaries
            ]
        t = time.perf_counter()
        for s in slots:
            T._step(s, T._slot_batch(s.plan, batch), 1e-4, plan, cfg.dtype == "bfloat16", False)
        ts = time.perf_counter() - t
        full.append(n / (tc + ts))
        print(
            f"bare forward {fwd[-1]:.0f} tok/s; forward+capture {n / tc:.0f} tok/s; "
            f"30 steps {n / ts:.0f} tok/s; together {full[-1]:.0f} tok/s",
            flush=True,
        )
    out = {
        "command": " ".join(sys.argv),
        "model_dtype": a.model_dtype,
        "dict_dtype": cfg.dtype,
        "batch": n,
        "bare_forward_tok_s": fwd,
        "train_tok_s": full,
        "median_ratio": statistics.median(full) / statistics.median(fwd),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_speed_{a.model_dtype}_{cfg.dtype}.json").write_text(
        json.dumps(out, indent=1)
    )


# --- side by side: bare forward vs lmscope's shared pass vs sparsify (issue 20) -----------------
SPARSIFY_PY = "/work/scratch/step-bench-venv/bin/python"


def _write_windows(lm, path: Path, split: str, n_tokens: int, multiple: int) -> dict:
    """Packed contexts of `split` with >= n_tokens trained-on positions, a multiple of
    `multiple` contexts, as raw uint16 [n_ctx, 128] (sparsify's MemmapDataset format)."""
    import numpy as np

    it = iter_contexts(lm, "default", ctx_len=128, split=split, seed=0)
    rows, have = [], 0
    while have < n_tokens or len(rows) % multiple:
        c = next(it)
        rows.append(c)
        have += int(token_mask(lm, c[None]).sum())
    arr = torch.stack(rows).numpy().astype(np.uint16)
    assert int(arr.max()) < 2**16
    arr.tofile(path)
    return {"path": str(path), "contexts": len(rows), "trained_positions": have}


def _read_windows(path: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64)).view(-1, 128)


def _worker_bare(a, spec: dict) -> dict:
    """The model alone (no hooks, no LM head: the base model, as sparsify's CLI loads it for
    FVU training) on the same windows, in sparsify's batch (8) and lmscope's model batch (16)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec["model_dir"], dtype=getattr(torch, spec["model_dtype"]))
    model.eval()
    toks = _read_windows(spec["train"]["path"])
    out = {}
    for b in (8, 16):
        with torch.no_grad():
            model(toks[:b])  # warm-up: first-call allocations
            t, c = time.perf_counter(), time.process_time()
            for i in range(0, len(toks), b):
                model(toks[i : i + b])
        out[f"batch{b}_s"] = time.perf_counter() - t
        out[f"batch{b}_cpu_s"] = time.process_time() - c
    return out


def _worker_lmscope(a, spec: dict) -> dict:
    """lmscope's trainer, its own StreamSource (one shared pass, shuffle buffer) fed the file's
    windows: train() from the first model pass to the 30 dictionaries written."""
    from lmscope.dictionaries.sources import StreamSource

    lm = load_model("smollm2-135m", dtype=spec["model_dtype"])
    base = whole_model_defaults(lm)
    out = spec["lmscope_out"] + ("-base" if getattr(a, "name", "") == "lmscope-base" else "")
    cfg = TrainConfig(
        **{
            **base.to_dict(),
            "tokens": spec["tokens"],
            "dtype": spec["dict_dtype"],
            "out": out,
            "force": True,
            "progress": False,
            "checkpoint_every": 0,
        }
    )
    ctxs = list(_read_windows(spec["train"]["path"]))
    hooks = [f"blocks.{L}.mlp_{s}" for L in range(lm.n_layers) for s in ("in", "out")]
    src = StreamSource(
        lm,
        hooks,
        corpus="file",
        ctx_len=128,
        batch_size=cfg.batch_size,
        buffer_mb=cfg.buffer_mb,
        max_batches=cfg.tokens // cfg.batch_size,
        model_batch=cfg.model_batch,
        seed=cfg.seed,
        contexts=lambda: iter(ctxs),
    )
    # Warm-up outside the timer (one step of one dictionary): the first train() in a process
    # pays ~8 CPU s of lazy imports (torch.distributed.tensor, dynamo, scipy, ...; cProfile).
    warm = TrainConfig(
        **{**cfg.to_dict(), "hooks": "blocks.0.mlp_in", "tokens": cfg.batch_size}
        | {"out": out + "-warmup"}
    )
    wsrc = StreamSource(
        lm,
        hooks[:2],
        corpus="file",
        ctx_len=128,
        batch_size=cfg.batch_size,
        max_batches=1,
        contexts=lambda: iter(ctxs),
    )
    train(warm, lm=lm, source=wsrc)
    t, c = time.perf_counter(), time.process_time()
    res = train(cfg, lm=lm, source=src)
    return {
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - c,
        "tokens": res.tokens,
        "steps": res.steps,
        "warmup_steps": res.plan.warmup_steps,
        "decay_start": res.plan.decay_start,
        "dead_tokens": res.plan.dead_tokens,
        "lr": res.plan.lr,
        "dictionaries": {h: str(p) for h, p in res.dictionaries.items()},
        "lmscope_file": sys.modules["lmscope"].__file__,
    }


def _worker_sparsify(a, spec: dict) -> dict:
    """sparsify 1.3.3's own Trainer on the same windows and model folder: transcoders on every
    layers.L.mlp (its input -> its output), skip connection, Adam, same LR/k/width/AuxK."""
    from sparsify import SparseCoderConfig, Trainer
    from sparsify import TrainConfig as SparsifyConfig
    from sparsify.data import MemmapDataset
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec["model_dir"], dtype=getattr(torch, spec["model_dtype"]))
    ds = MemmapDataset(spec["train"]["path"], 128)
    m = spec["lmscope_plan"]
    cfg = SparsifyConfig(
        SparseCoderConfig(num_latents=spec["width"], k=32, transcode=True, skip_connection=True),
        batch_size=8,  # sequences: 8 x 128 = 1,024 positions, less the special tokens
        optimizer="adam",
        lr=m["lr"],
        lr_warmup_steps=m["warmup_steps"],
        auxk_alpha=1 / 32,
        dead_feature_threshold=m["dead_tokens"],
        exclude_tokens=spec["special_ids"],
        hookpoints=["layers.*.mlp"],
        save_dir=spec["sparsify_out"],
        run_name="run",
        save_every=10**9,
        log_to_wandb=False,
    )
    bf16 = spec["dict_dtype"] == "bfloat16"
    # Warm-up outside the timer, as lmscope's: one batch, one hook point.
    wcfg = SparsifyConfig(
        **{**cfg.__dict__, "hookpoints": ["layers.0.mlp"], "save_dir": spec["sparsify_out"] + "-w"}
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        Trainer(wcfg, MemmapDataset(spec["train"]["path"], 128, max_examples=8), model).fit()
    t, c = time.perf_counter(), time.process_time()
    tr = Trainer(cfg, ds, model)
    # sparsify autocasts to bf16 on CUDA only (sparse_coder.py); on CPU its fp32 coders would
    # not accept the bf16 model's activations, so its fit runs under CPU bf16 autocast here.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tr.fit()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    n = len(ds) // cfg.batch_size * cfg.batch_size
    toks = _read_windows(spec["train"]["path"])[:n]
    ids = torch.tensor(spec["special_ids"])
    return {
        "seconds": dt,
        "cpu_seconds": dc,
        "tokens": int(torch.isin(toks, ids, invert=True).sum()),
        "steps": len(ds) // cfg.batch_size,
    }


def _worker_eval(a, spec: dict) -> dict:
    """Held-out FVU of both tools' 30 transcoders on the same held-out windows' activations,
    each coder's own forward, in float32; per-context sums for a paired bootstrap."""
    from sparsify import SparseCoder

    from lmscope.dictionaries import load_dictionary

    lm = load_model("smollm2-135m", dtype=spec["model_dtype"])
    toks = _read_windows(spec["heldout"]["path"])
    hooks = [f"blocks.{L}.mlp_{s}" for L in range(lm.n_layers) for s in ("in", "out")]
    acts: dict[str, list] = {h: [] for h in hooks}
    cs = []
    for i in range(0, len(toks), 16):  # one pass captures all 60 hook points (model dtype)
        b = toks[i : i + 16]
        with torch.no_grad():
            res = run(lm, b, capture=hooks)
        keep = token_mask(lm, b)
        for h in hooks:
            acts[h].append(res.acts[h][keep])
        cs.append((torch.arange(len(b))[:, None] + i).expand_as(keep)[keep])
    ctx, n_ctx = torch.cat(cs), len(toks)
    mine = {k: v for k, v in spec.items() if k.startswith("dictionaries:")}
    sums = {k.removeprefix("dictionaries:"): [] for k in mine} | {"sparsify": [], "var": []}
    for L in range(lm.n_layers):
        hin, hout = f"blocks.{L}.mlp_in", f"blocks.{L}.mlp_out"
        x, t = torch.cat(acts.pop(hin)).float(), torch.cat(acts.pop(hout)).float()
        mu = t.mean(0)
        sums["var"].append(torch.zeros(n_ctx).index_add_(0, ctx, (t - mu).pow(2).sum(1)))
        ssae = SparseCoder.load_from_disk(Path(spec["sparsify_out"]) / "run" / f"layers.{L}.mlp")
        with torch.no_grad():
            preds = {"sparsify": ssae(x, t).sae_out.float()}
            for k, folders in mine.items():
                preds[k.removeprefix("dictionaries:")] = load_dictionary(folders[hin])(x)
        for k, p in preds.items():
            sums[k].append(torch.zeros(n_ctx).index_add_(0, ctx, (p - t).pow(2).sum(1)))
    return {k: torch.stack(v).tolist() for k, v in sums.items()}  # [layer][context]


WORKERS = {
    "bare": _worker_bare,
    "lmscope": _worker_lmscope,
    "lmscope-base": _worker_lmscope,
    "sparsify": _worker_sparsify,
    "eval": _worker_eval,
}
# Optional contender "lmscope-base": the same worker importing lmscope from another checkout
# (LMSCOPE_BASE_TREE, e.g. `git archive <commit> lmscope | tar -x -C DIR`), so a change to the
# step is measured against its baseline in the same run; its own output folder.
BASE_TREE = os.environ.get("LMSCOPE_BASE_TREE")


def _run_worker(name: str, spec_path: Path, out: Path) -> dict:
    py = SPARSIFY_PY if name in ("sparsify", "eval") else sys.executable
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    if name == "lmscope-base":  # its lmscope first on the path, this file's helpers after it
        env["PYTHONPATH"] = f"{BASE_TREE}{os.pathsep}{root}"
    load0 = os.getloadavg()[0]
    subprocess.run(
        [py, str(Path(__file__).resolve()), "_worker", name, str(spec_path), str(out)],
        env=env,
        check=True,
    )
    r = json.loads(out.read_text())
    r["load1_before"], r["load1_after"] = load0, os.getloadavg()[0]
    return r


def _boot_ci(vals: list[float]) -> tuple[float, float]:
    s = sorted(vals)
    return s[int(0.025 * len(s))], s[int(0.975 * len(s)) - 1]


def cmd_vs_sparsify(a) -> None:
    """One run, same model folder, same token windows, same 30 hook points and settings."""
    from lmscope.dictionaries.train_config import resolve_plan
    from lmscope.models.load import _gguf_cache_folder, resolve
    from lmscope.models.tokens import special_ids

    if not Path(SPARSIFY_PY).exists():
        sys.exit(f"error: no sparsify venv at {SPARSIFY_PY}; pip install eai-sparsify there")
    scratch = Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    mdt = a.model_dtype
    if mdt == "auto":  # as lmscope run: bf16 where this CPU has native bf16
        from lmscope.models.load import cpu_half_is_slow

        mdt = "float32" if cpu_half_is_slow(torch.bfloat16) else "bfloat16"
    lm = load_model("smollm2-135m", dtype=mdt)
    base = whole_model_defaults(lm)
    cfg = TrainConfig(**{**base.to_dict(), "tokens": a.tokens, "out": str(scratch / "lmscope")})
    dict_dtype = a.dict_dtype or base.dtype
    pairs = [(f"blocks.{L}.mlp_in", f"blocks.{L}.mlp_out") for L in range(lm.n_layers)]
    dims = {h: lm.hooks[h].d for h in lm.hooks.points}
    plan = resolve_plan(
        cfg, hooks=pairs, dims=dims, model=lm.name, world_size=1, source="s", fingerprint={}
    )
    spec = {
        # the folder lmscope dequantized the GGUF into (safetensors, fp32): both tools load it
        "model_dir": str(_gguf_cache_folder(resolve("smollm2-135m"))),
        "model_dtype": str(lm.dtype).removeprefix("torch."),
        "dict_dtype": dict_dtype,
        "tokens": a.tokens,
        "width": int(base.width),
        "special_ids": special_ids(lm).tolist(),
        "train": _write_windows(lm, scratch / "train.bin", "train", a.tokens, 8),
        "heldout": _write_windows(lm, scratch / "heldout.bin", "heldout", a.val_tokens, 16),
        "lmscope_out": str(scratch / "lmscope"),
        "sparsify_out": str(scratch / "sparsify"),
        "lmscope_plan": {
            "lr": plan.lr,
            "warmup_steps": plan.warmup_steps,
            "dead_tokens": plan.dead_tokens,
            "steps": plan.steps,
        },
        "threads": a.threads or torch.get_num_threads(),
    }
    del lm
    spec_path = scratch / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    names = ["bare", "lmscope", "sparsify"] + (["lmscope-base"] if BASE_TREE else [])
    rounds = []
    for r in range(a.rounds):
        n = len(names)
        order = names[r % n :] + names[: r % n]  # rotate so no tool always runs first
        got = {}
        for n in order:
            got[n] = _run_worker(n, spec_path, scratch / f"{n}-{r}.json")
            print(f"round {r} {n}: {json.dumps(got[n])}", file=sys.stderr, flush=True)
        rounds.append(got)
    # training is deterministic for a seed (both tools on CPU): the last round's coders
    for n in names:
        if n.startswith("lmscope"):
            spec[f"dictionaries:{n}"] = rounds[-1][n]["dictionaries"]
    spec_path.write_text(json.dumps(spec, indent=1))
    ev = _run_worker("eval", spec_path, scratch / "eval.json")
    _summarize(a, spec, rounds, ev)


def _summarize(a, spec: dict, rounds: list[dict], ev: dict) -> None:
    """tokens/s per tool and round, held-out FVUs with bootstrap intervals -> results file."""
    pos = spec["train"]["trained_positions"]
    # --clock cpu: process CPU time (meaningful with --threads 1 on a loaded machine: it counts
    # the work, not the wait); wall: wall time (a quiet machine, all cores)
    sfx = "_cpu_s" if a.clock == "cpu" else "_s"
    key = "cpu_seconds" if a.clock == "cpu" else "seconds"
    tok_s = {
        "bare (batch 16)": [pos / g["bare"][f"batch16{sfx}"] for g in rounds],
        "bare (batch 8)": [pos / g["bare"][f"batch8{sfx}"] for g in rounds],
        "lmscope": [g["lmscope"]["tokens"] / g["lmscope"][key] for g in rounds],
        "sparsify": [g["sparsify"]["tokens"] / g["sparsify"][key] for g in rounds],
    }
    if "lmscope-base" in rounds[0]:
        tok_s["lmscope-base"] = [
            g["lmscope-base"]["tokens"] / g["lmscope-base"][key] for g in rounds
        ]
    med = {k: statistics.median(v) for k, v in tok_s.items()}
    var = torch.tensor(ev["var"])  # [layer, context]
    err = {k: torch.tensor(ev[k]) for k in ("lmscope", "lmscope-base", "sparsify") if k in ev}

    def mean_fvu(e: torch.Tensor, idx: torch.Tensor) -> float:
        return float((e[:, idx].sum(1) / var[:, idx].sum(1)).mean())

    n_ctx = var.shape[1]
    allc = torch.arange(n_ctx)
    g = torch.Generator().manual_seed(0)
    boots = [torch.randint(0, n_ctx, (n_ctx,), generator=g) for _ in range(a.bootstrap)]
    fvu = {}
    for k, e in err.items():
        fvu[k] = {
            "mean_over_layers": mean_fvu(e, allc),
            "ci95": _boot_ci([mean_fvu(e, b) for b in boots]),
            "per_layer": (e.sum(1) / var.sum(1)).tolist(),
        }
    diff = [mean_fvu(err["sparsify"], b) - mean_fvu(err["lmscope"], b) for b in boots]
    diff_base = (
        [mean_fvu(err["lmscope-base"], b) - mean_fvu(err["lmscope"], b) for b in boots]
        if "lmscope-base" in err
        else None
    )
    out = {
        "command": " ".join(sys.argv),
        "clock": a.clock,
        "spec": spec,
        "rounds": rounds,
        "tok_s": tok_s,
        "median_tok_s": med,
        "lmscope_vs_bare16": med["lmscope"] / med["bare (batch 16)"],
        "sparsify_vs_bare8": med["sparsify"] / med["bare (batch 8)"],
        "lmscope_vs_sparsify": med["lmscope"] / med["sparsify"],
        "lmscope_vs_base": med["lmscope"] / med["lmscope-base"] if "lmscope-base" in med else None,
        "base_tree": BASE_TREE,
        "heldout_fvu": fvu,
        "fvu_sparsify_minus_lmscope": {
            "value": fvu["sparsify"]["mean_over_layers"] - fvu["lmscope"]["mean_over_layers"],
            "ci95": _boot_ci(diff),
        },
        "heldout_contexts": n_ctx,
    }
    if diff_base is not None:
        out["fvu_base_minus_lmscope"] = {
            "value": fvu["lmscope-base"]["mean_over_layers"] - fvu["lmscope"]["mean_over_layers"],
            "ci95": _boot_ci(diff_base),
        }
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"train_vs_sparsify-{stamp}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"| run | tok/s (median of {a.rounds}) | rounds | vs bare forward |")
    print("|---|---|---|---|")
    for k, v in tok_s.items():
        ref = med["bare (batch 8)"] if k == "sparsify" else med["bare (batch 16)"]
        each = " / ".join(f"{x:,.0f}" for x in v)
        print(f"| {k} | {med[k]:,.0f} | {each} | {med[k] / ref:.3f} |")
    for k, f in fvu.items():
        lo, hi = f["ci95"]
        print(
            f"held-out FVU {k} (mean over layers): {f['mean_over_layers']:.4f} [{lo:.4f}, {hi:.4f}]"
        )
    d = out["fvu_sparsify_minus_lmscope"]
    print(f"sparsify - lmscope: {d['value']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    if diff_base is not None:
        d = out["fvu_base_minus_lmscope"]
        print(f"base - lmscope: {d['value']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
        print(f"lmscope / lmscope-base tok/s: {out['lmscope_vs_base']:.2f}x")
    print(f"lmscope / sparsify tok/s: {out['lmscope_vs_sparsify']:.2f}x; wrote {path}")


def cmd_worker(a) -> None:
    spec = json.loads(Path(a.spec).read_text())
    torch.set_num_threads(spec["threads"])
    r = WORKERS[a.name](a, spec)
    Path(a.out).write_text(json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("lr")
    q.add_argument("--layers", default="3,11,19,27")
    q.add_argument("--train-tokens", type=int, default=32768)
    q.add_argument("--val-tokens", type=int, default=8192)
    q.add_argument("--mults", default="1,2,4,8")
    q.add_argument("--batch-size", type=int, default=1024)
    q.add_argument("--bootstrap", type=int, default=1000)
    q.add_argument("--model-dtype", default="bfloat16")
    q.add_argument("--scratch", default="/tmp/bench_train_lr")
    q.set_defaults(func=cmd_lr)
    q = sub.add_parser("speed")
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--model-dtype", default="bfloat16")
    q.add_argument("--dict-dtype", default=None)
    q.set_defaults(func=cmd_speed)
    q = sub.add_parser("vs-sparsify")
    q.add_argument("--tokens", type=int, default=32768)
    q.add_argument("--val-tokens", type=int, default=4096)
    q.add_argument("--rounds", type=int, default=2)
    q.add_argument("--model-dtype", default="auto")
    q.add_argument("--dict-dtype", default=None)
    q.add_argument("--bootstrap", type=int, default=1000)
    q.add_argument("--threads", type=int, default=0, help="torch threads per tool (0: torch's)")
    q.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    q.add_argument("--scratch", default="/tmp/bench_train_vs_sparsify")
    q.set_defaults(func=cmd_vs_sparsify)
    q = sub.add_parser("_worker")
    q.add_argument("name", choices=sorted(WORKERS))
    q.add_argument("spec")
    q.add_argument("out")
    q.set_defaults(func=cmd_worker)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()

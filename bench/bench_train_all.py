"""Whole-model training: the learning-rate choice on held-out FVU, and the shared pass's speed.

    # LR: multiples of the Gao et al. default on a short run of a few layers' skip transcoders,
    # scored on held-out documents (the corpus's heldout split), never on the training loss
    python bench/bench_train_all.py lr --layers 3,11,19,27 --train-tokens 32768 --val-tokens 8192
    # speed: tokens/s of a bare forward vs forward + all 30 dictionaries' steps, same contexts
    python bench/bench_train_all.py speed --steps 3

Writes bench/results/train_lr.json / train_speed.json. The machine is shared: report medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()

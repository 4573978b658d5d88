"""TopK training-step throughput: lmscope vs SAELens vs EleutherAI sparsify, side by side.

Two shapes (`--shape`): `sae` (below) and `transcoder`, the whole-model run's dictionaries:
skip transcoders blocks.15.mlp_in -> mlp_out, width 2,304, k 32, batch 1,024. At that shape
lmscope and sparsify (`transcode=True, skip_connection=True`, its trainer's init: encoder
bias centring the inputs, b_dec the output mean, no decoder normalization) train skip
transcoders; SAELens 6.x has transcoder classes for inference only, so its row trains a TopK
SAE on mlp_in at the same width, k and batch (the same encoder GEMM, no skip matmuls).

All three train a TopK SAE (d_in 576, d_sae 4608, k 32, batch 4096, Adam, AuxK on) on the
SAME cached activations (layer 15 resid_post of the default model, ~100k tokens, BOS
positions dropped), in the same order, for the same number of steps, in fp32 and with
bf16 autocast. Each contender runs in its own subprocess (so one cannot warm or slow the
other's allocator/threads), one after the other in ONE invocation. Reported per run:
median step time and activations/s (over the timed steps, after warm-up), the ratio to
SAELens, and FVU on 8,192 held-out activations after the same number of tokens. The
machine limit: the encoder matmul 4096x576 @ 576x4608 is the floor of a TopK step; we
time it in the same run and report step time / (2*batch*d_in*d_sae / peak GEMM rate).

Setup (once):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 sae-lens eai-sparsify
    .venv-bench/bin/pip install --no-deps -e .
(or point LMSCOPE_BENCH_PYTHON / LMSCOPE_MAIN_PYTHON at other interpreters.)
Run (from the repo root; the activation cache is captured with .venv on first use):
    .venv/bin/python bench/bench_train_step.py
    .venv/bin/python bench/bench_train_step.py --shape transcoder
Writes bench/results/train_step-<timestamp>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "smollm2-135m_blocks.15_100k.safetensors"
# What the cache holds: the SAE shape trains on resid_post, the transcoder shape maps mlp_in to
# mlp_out of the same block (one model pass captures all three).
HOOKS = {
    "acts": "blocks.15.resid_post",
    "mlp_in": "blocks.15.mlp_in",
    "mlp_out": "blocks.15.mlp_out",
}
RESULTS = ROOT / "bench" / "results"
# Interpreters: the peers' venv runs every contender; lmscope's own venv captures the cache.
BENCH_PY = Path(os.environ.get("LMSCOPE_BENCH_PYTHON", ROOT / ".venv-bench" / "bin" / "python"))
MAIN_PY = Path(os.environ.get("LMSCOPE_MAIN_PYTHON", ROOT / ".venv" / "bin" / "python"))
N_EVAL = 8192

CONTENDERS = ("lmscope", "saelens", "sparsify")
# Optional extra contender "lmscope-base": the same lmscope code path imported from another
# checkout (LMSCOPE_BASE_TREE, e.g. `git archive <commit> lmscope | tar -x -C DIR`), so a
# before/after of a kernel change is measured in the same run, under the same load.
BASE_TREE = os.environ.get("LMSCOPE_BASE_TREE")


# --- activation cache ---------------------------------------------------------------------
def corpus_text() -> str:
    """English text available offline everywhere: the docstrings of Python's standard library."""
    import importlib
    import inspect
    import pkgutil
    import warnings

    parts, seen = [], set()
    warnings.simplefilter("ignore")
    names = sorted(
        m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix)
    )
    for name in names:
        if name.startswith(("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this")):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - some stdlib modules need optional system libs
            continue
        for obj in [mod, *vars(mod).values()]:
            doc = (
                inspect.getdoc(obj)
                if (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj))
                else None
            )
            if doc and len(doc) > 200 and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    return "\n\n".join(parts)


def capture_cache(n_tokens: int, ctx: int = 128) -> None:
    """Run the default model once and save n_tokens activations per hook (BOS positions
    dropped)."""
    import torch
    from safetensors.torch import save_file

    from lmscope.models.load import load_model
    from lmscope.models.runtime import run

    lm = load_model("smollm2-135m")
    ids = lm.tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    body = ctx - 1
    n_ctx = math.ceil(n_tokens / body)
    if len(ids) < n_ctx * body:
        raise SystemExit(f"corpus too small: {len(ids)} tokens < {n_ctx * body}")
    bos = lm.bos_token_id
    tokens = torch.tensor(ids[: n_ctx * body]).view(n_ctx, body)
    tokens = torch.cat([torch.full((n_ctx, 1), bos), tokens], 1)  # [n_ctx, ctx], BOS first
    chunks = {key: [] for key in HOOKS}
    t0 = time.time()
    for s in range(0, n_ctx, 16):
        got = run(lm, tokens[s : s + 16], capture=list(HOOKS.values())).acts
        for key, hook in HOOKS.items():
            acts = got[hook]  # [b, ctx, 576]
            # drop BOS (resid norm ~4,600 outlier)
            chunks[key].append(acts[:, 1:].reshape(-1, acts.shape[-1]).float())
        print(f"\rcapturing {min(s + 16, n_ctx)}/{n_ctx} contexts", end="", file=sys.stderr)
    out = {key: torch.cat(c)[:n_tokens].contiguous() for key, c in chunks.items()}
    print(f"\ncaptured {n_tokens} activations in {time.time() - t0:.0f}s", file=sys.stderr)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    meta = {"model": lm.name, "ctx": str(ctx), **{f"hook.{k}": h for k, h in HOOKS.items()}}
    save_file(out, str(tmp), metadata=meta)
    os.replace(tmp, CACHE)


# --- one contender (runs in a subprocess) ---------------------------------------------------
def load_data(seed: int, keys: tuple[str, ...]):
    """(train, held-out) per key, the same shuffled rows for every key."""
    import torch
    from safetensors.torch import load_file

    cache = load_file(str(CACHE))
    n = cache[keys[0]].shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = []
    for key in keys:
        acts = cache[key][perm]
        out.append((acts[:-N_EVAL].contiguous(), acts[-N_EVAL:].contiguous()))
    return out


def batches(train, batch: int, n: int):
    """n batch offsets of `batch` rows, cycling through `train` in order (identical for every
    contender)."""
    pos = 0
    for _ in range(n):
        if pos + batch > train.shape[0]:
            pos = 0
        yield pos
        pos += batch


def fvu(recon, x) -> float:
    return float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def worker(args) -> dict:
    import torch

    torch.manual_seed(0)
    # Same for every contender: Adam moments of rarely firing latents decay into denormal
    # floats, which are several times slower on CPU.
    torch.set_flush_denormal(True)
    clock = _clock(args)
    tc = args.shape == "transcoder"
    (train, held), (train_t, held_t) = load_data(
        args.seed, ("mlp_in", "mlp_out") if tc else ("acts", "acts")
    )
    if not tc:
        train_t = held_t = None
    d_in = train.shape[1]
    bf16 = args.precision == "bf16"
    ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else None
    n_total = args.warmup + args.steps
    step, evaluate = _make_contender(args, d_in, train, train_t, ac)
    times = []
    for i, pos in enumerate(batches(train, args.batch, n_total)):
        x = train[pos : pos + args.batch]
        t = None if train_t is None else train_t[pos : pos + args.batch]
        t0 = clock()
        step(x, t)
        dt = clock() - t0
        if i >= args.warmup:
            times.append(dt)
    with torch.no_grad():
        score = evaluate(held, held_t)
    med = statistics.median(times)
    return {
        "contender": args.worker,
        "precision": args.precision,
        "step_s_median": med,
        "step_s_all": times,
        "acts_per_s": args.batch / med,
        "fvu_heldout": score,
        "tokens_trained": n_total * args.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # which checkout a lmscope contender ran (lmscope vs lmscope-base)
        "lmscope_file": getattr(sys.modules.get("lmscope"), "__file__", None),
    }


def _make_contender(args, d_in, train, train_t, ac):
    import contextlib

    import torch

    autocast = ac or contextlib.nullcontext
    lr = args.lr
    tc = train_t is not None
    if args.worker in ("lmscope", "lmscope-base"):
        from lmscope.dictionaries import DictionaryConfig, build

        extra = {}
        if tc:  # a skip transcoder, as the whole-model run trains
            extra = dict(
                d_out=train_t.shape[1],
                skip=True,
                hook_name=HOOKS["mlp_in"],
                out_hook_name=HOOKS["mlp_out"],
            )
        d = build(DictionaryConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, arch="topk", **extra))
        d.init_from_data(train[:16384], None if train_t is None else train_t[:16384])
        opt = torch.optim.Adam(d.parameters(), lr=lr, fused=True)
        since_fired = torch.zeros(args.d_sae, dtype=torch.long)

        def step(x, t):
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = d.loss(x, t, dead_mask=since_fired > args.dead_steps)
            out.loss.backward()
            d.remove_parallel_grad_()
            opt.step()
            d.normalize_decoder_()
            since_fired.add_(1).masked_fill_(out.fired, 0)

        return step, lambda h, ht: fvu(d(h), h if ht is None else ht)

    if args.worker == "sparsify":
        from sparsify import SparseCoder, SparseCoderConfig

        sae = SparseCoder(
            d_in,
            SparseCoderConfig(num_latents=args.d_sae, k=args.k, transcode=tc, skip_connection=tc),
        )
        opt = torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
        since_fired = torch.zeros(args.d_sae, dtype=torch.long)
        with torch.no_grad():  # sparsify's trainer init on the first batch (trainer.py)
            if tc:
                mean_in = train[: args.batch].mean(0)
                sae.encoder.bias.copy_(-mean_in @ sae.encoder.weight.T)
                sae.b_dec.copy_(train_t[: args.batch].mean(0))
            else:
                sae.b_dec.copy_(train[: args.batch].mean(0))

        def step(x, t):
            opt.zero_grad(set_to_none=True)
            with autocast():  # sparsify only autocasts on CUDA; on CPU it has to be wrapped by hand
                out = sae(x, t, dead_mask=since_fired > args.dead_steps)
                loss = out.fvu + args.auxk_alpha * out.auxk_loss
            loss.backward()
            if not tc:  # its trainer keeps transcoder decoders unnormalized
                sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            if not tc:
                sae.set_decoder_norm_to_unit_norm()
            fired = torch.zeros(args.d_sae, dtype=torch.bool)
            fired[out.latent_indices.flatten()] = True
            since_fired.add_(1).masked_fill_(fired, 0)

        return step, lambda h, ht: fvu(sae(h).sae_out.float(), h if ht is None else ht)

    if args.worker == "saelens":
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=d_in,
                d_sae=args.d_sae,
                k=args.k,
                normalize_activations="expected_average_only_in",
            )
        )
        n_total = args.warmup + args.steps
        cfg = SAETrainerConfig(
            total_training_samples=n_total * args.batch,
            train_batch_size_samples=args.batch,
            lr=lr,
            lr_end=lr,
            autocast=ac is not None,
            dead_feature_window=args.dead_steps,
            logger=LoggingConfig(log_to_wandb=False),
        )
        trainer = SAETrainer(cfg, sae, data_provider=iter(()))
        sample = train[:16384]
        scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())
        trainer.activation_scaler.scaling_factor = (
            scale  # what its estimate_scaling_factor computes
        )
        sae.b_dec.data.copy_((sample * scale).mean(0)) if hasattr(sae, "b_dec") else None

        def step(x, t):  # no transcoder trainer: an SAE on the input at the same shape
            trainer.step(x)
            trainer.n_training_steps += 1

        def evaluate(h, ht):
            hs = h * scale
            return fvu(sae(hs).float(), hs)

        return step, evaluate
    raise SystemExit(f"unknown contender {args.worker}")


def _clock(args):
    """Wall time, or with --clock cpu one intra-op thread and the process's CPU time.

    On a shared 2-core machine (load 15-20 while these figures were taken) wall time mostly
    measures the neighbours, and two OpenMP threads wait at every barrier for a core; one
    thread's CPU time counts only the work done (caches stay shared, so it is not immune).
    """
    import torch

    if args.clock == "cpu":
        torch.set_num_threads(1)
        return time.process_time
    return time.perf_counter


def gemm_peak(args) -> dict:
    import torch

    clock = _clock(args)

    a = torch.randn(args.batch, 576)
    b = torch.randn(576, args.d_sae)
    out = {}
    for prec in ("fp32", "bf16"):
        aa, bb = (a, b) if prec == "fp32" else (a.bfloat16(), b.bfloat16())
        for _ in range(2):
            aa @ bb
        ts = []
        for _ in range(args.gemm_reps):
            t0 = clock()
            aa @ bb
            ts.append(clock() - t0)
        best, med = min(ts), statistics.median(ts)
        flops = 2 * args.batch * 576 * args.d_sae
        out[prec] = {
            "gemm_s_median": med,
            "gemm_s_best": best,
            "gflops_peak": flops / best / 1e9,
            "gflops_median": flops / med / 1e9,
        }
    return out


# --- orchestration ---------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shape",
        choices=("sae", "transcoder"),
        default="sae",
        help="sae: resid_post, 4608 latents, batch 4096 (issue 3); transcoder: skip transcoder "
        "mlp_in -> mlp_out, 2304 latents, batch 1024 (issue 20's whole-model run)",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every contender")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, help="default 4096 (sae) / 1024 (transcoder)")
    p.add_argument("--d-sae", type=int, help="default 4608 (sae) / 2304 (transcoder)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument(
        "--lr",
        type=float,
        default=4e-4,
        help="Adam lr, the same for all (Gao et al. 2024 scaling for 4608 latents)",
    )
    p.add_argument("--auxk-alpha", type=float, default=1 / 32)
    p.add_argument(
        "--dead-steps",
        type=int,
        default=10,
        help="steps without firing before a latent counts as dead (AuxK)",
    )
    p.add_argument("--gemm-reps", type=int, default=15)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: wall time at the default threads; cpu: one thread, process CPU time per "
        "step (for a loaded machine, see _clock)",
    )
    p.add_argument(
        "--tokens", type=int, default=100_000, help="activations to capture into the cache"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    tc = args.shape == "transcoder"
    if args.batch is None:
        args.batch = 1024 if tc else 4096
    if args.d_sae is None:
        args.d_sae = 2304 if tc else 4608

    if args.capture:
        capture_cache(args.tokens)
        return
    if args.gemm:
        print(json.dumps(gemm_peak(args)))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return

    if not CACHE.exists():
        print(f"capturing activations into {CACHE.relative_to(ROOT)} (once)", file=sys.stderr)
        subprocess.run(
            [str(MAIN_PY), __file__, "--capture", "--tokens", str(args.tokens)], check=True
        )
    if not BENCH_PY.exists():
        raise SystemExit(
            f"{BENCH_PY} missing: create the bench venv (see the docstring of {__file__})"
        )
    common = [
        "--shape",
        args.shape,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--d-sae",
        str(args.d_sae),
        "--k",
        str(args.k),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--auxk-alpha",
        str(args.auxk_alpha),
        "--dead-steps",
        str(args.dead_steps),
        "--gemm-reps",
        str(args.gemm_reps),
        "--clock",
        args.clock,
    ]

    def sub(extra):
        env = None
        if "lmscope-base" in extra:
            if not BASE_TREE:
                raise SystemExit("lmscope-base needs LMSCOPE_BASE_TREE=<a checkout's root>")
            env = {**os.environ, "PYTHONPATH": BASE_TREE}
        r = subprocess.run(
            [str(BENCH_PY), __file__, *common, *extra], capture_output=True, text=True, env=env
        )
        if r.returncode != 0 or not r.stdout.strip():
            raise SystemExit(f"{extra} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # The machine is shared: load changes within minutes. Contenders are interleaved, round
    # after round, and every figure is the median over all timed steps of all rounds.
    gemms, by_key = [], {}
    for rnd in range(args.rounds):
        gemms.append(sub(["--gemm"]))
        for prec in args.precisions.split(","):
            for c in args.contenders.split(","):
                print(f"round {rnd + 1}/{args.rounds}: {c} {prec} ...", file=sys.stderr)
                by_key.setdefault((c, prec), []).append(sub(["--worker", c, "--precision", prec]))
    gemms.append(sub(["--gemm"]))
    gemm = {
        p: {
            "gflops_peak": max(g[p]["gflops_peak"] for g in gemms),
            "gflops_median": statistics.median(g[p]["gflops_median"] for g in gemms),
        }
        for p in ("fp32", "bf16")
    }
    runs = []
    for (c, prec), rs in by_key.items():
        steps = [t for r in rs for t in r["step_s_all"]]
        med = statistics.median(steps)
        runs.append(
            {
                "contender": c,
                "precision": prec,
                "step_s_median": med,
                "acts_per_s": args.batch / med,
                "step_s_round_medians": [r["step_s_median"] for r in rs],
                "fvu_heldout": statistics.median(r["fvu_heldout"] for r in rs),
                "fvu_rounds": [r["fvu_heldout"] for r in rs],
                "tokens_trained": rs[0]["tokens_trained"],
                "threads": rs[0]["threads"],
                "torch": rs[0]["torch"],
                "lmscope_file": rs[0].get("lmscope_file"),
            }
        )

    flops = 2 * args.batch * 576 * args.d_sae
    rows = []
    for r in runs:
        base = next(
            (x for x in runs if x["contender"] == "saelens" and x["precision"] == r["precision"]),
            None,
        )
        peak = gemm[r["precision"]]["gflops_peak"] * 1e9
        r["vs_saelens"] = base["step_s_median"] / r["step_s_median"] if base else None
        r["floor_s"] = flops / peak
        r["x_floor"] = r["step_s_median"] / r["floor_s"]
        rows.append(r)
    print(
        f"\n{args.shape}: TopK d_in 576, d_sae {args.d_sae}, k {args.k}, batch {args.batch}, "
        f"{args.rounds} rounds x "
        f"{args.steps} timed steps (+{args.warmup} warm-up), {os.cpu_count()} CPUs"
    )
    print(
        f"peak GEMM {args.batch}x576@576x{args.d_sae} (best of {len(gemms)} probes): "
        f"fp32 {gemm['fp32']['gflops_peak']:.0f} GFLOP/s, bf16 {gemm['bf16']['gflops_peak']:.0f} "
        "GFLOP/s; "
        f"medians {gemm['fp32']['gflops_median']:.0f} / {gemm['bf16']['gflops_median']:.0f}"
    )
    print(
        f"{'contender':10} {'prec':5} {'step ms':>8} {'act/s':>8} {'vs SAELens':>10} "
        f"{'x floor':>8} {'FVU':>7}"
    )
    for r in rows:
        vs = f"{r['vs_saelens']:.2f}x" if r["vs_saelens"] else "-"
        print(
            f"{r['contender']:10} {r['precision']:5} {r['step_s_median'] * 1e3:8.1f} "
            f"{r['acts_per_s']:8.0f} "
            f"{vs:>10} {r['x_floor']:8.2f} {r['fvu_heldout']:7.4f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.replace(":", "")
    out = RESULTS / (f"train_step-{stamp}.json" if not tc else f"train_step_tc-{stamp}.json")
    payload = {
        "schema_version": 1,
        "bench": "train_step",
        "started": started,
        "argv": sys.argv,
        "settings": {
            k: v
            for k, v in vars(args).items()
            if k not in ("worker", "precision", "capture", "gemm")
        },
        "cache": str(CACHE.relative_to(ROOT)),
        "gemm": gemm,
        "gemm_probes": gemms,
        "runs": rows,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""How big a TopK dictionary can one machine step, and what does a step cost per latent?

Trains real steps of the trainer's own code path (trainer._make_slot / trainer._step: the
sparse TopK kernels, AuxK, fused Adam, decoder renorm) on random activations, one width per
fresh subprocess so each peak RSS is that width's alone, and separately times the encoder
GEMM of the same shape (the floor of a TopK step). The per-step cost is fitted as

    t_step = t_gemm(batch * d_model * n_latents) + c_latent * n_latents

and docs/scaling.md extrapolates it to 16M / 34M latents on GPUs.

    .venv/bin/python bench/bench_scale.py                          # widths 16k..1M, d_model 576
    .venv/bin/python bench/bench_scale.py --widths 65536 --batch 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def one(width: int, d_model: int, batch: int, steps: int, k: int, auxk: bool) -> dict:
    """Build a `width`-latent TopK dictionary and take `steps` training steps; measure.

    With `auxk`, every latent counts as dead from step 2 on, so the AuxK loss runs too (its
    second decode/encode adds two full-size gradient temporaries, see docs/scaling.md).
    """
    aux_after = batch if auxk else 10**12
    sys.path.insert(0, str(ROOT))
    from lmscope.dictionaries.train_config import TrainConfig, resolve_plan
    from lmscope.dictionaries.trainer import _make_slot, _step
    from lmscope.dist import DistInfo

    torch.manual_seed(0)
    cfg = TrainConfig(
        model="bench",
        hooks="h",
        width=str(width),
        k=k,
        tokens=batch * (steps + 1),
        batch_size=batch,
        progress=False,
        dead_tokens=aux_after,
    )
    plan = resolve_plan(
        cfg,
        hooks=[("h", None)],
        dims={"h": d_model},
        model="bench",
        world_size=1,
        source="random",
        fingerprint={},
    )
    x = torch.randn(batch, d_model) * 3 + 1
    t0 = time.perf_counter()
    slot = _make_slot(
        cfg, plan.dictionaries[0], "bench", DistInfo(), False, torch.device("cpu"), {"h": x}, batch
    )
    t_init = time.perf_counter() - t0
    rss_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KB -> GB
    times = []
    for _ in range(steps):
        xb = torch.randn(batch, d_model) * 3 + 1
        t0 = time.perf_counter()
        m, _ = _step(slot, {"h": xb}, plan.lr, plan, autocast=False, ddp=False)
        times.append(time.perf_counter() - t0)
    # The floor: the encoder GEMM alone, same shapes.
    W = slot.sae.W_enc.detach()
    gemm = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.addmm(slot.sae.b_enc.detach(), xb, W)
        gemm.append(time.perf_counter() - t0)
    return {
        "width": width,
        "d_model": d_model,
        "batch": batch,
        "k": k,
        "threads": torch.get_num_threads(),
        "init_s": t_init,
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
        "first_step_s": times[0],
        "gemm_s": min(gemm),
        "gemm_gflops": 2 * batch * d_model * width / min(gemm) / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_after_init_gb": rss_init,
        "dead_frac_last": m.dead_frac,
        "auxk": auxk,
        "param_bytes": sum(p.numel() * p.element_size() for p in slot.sae.parameters()),
    }


def peak_gemm(n: int = 2048) -> float:
    """This machine's fp32 GEMM rate (GFLOP/s) on a square matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return 2 * n**3 / best / 1e9


def mem_bandwidth(n_bytes: int = 2**29) -> float:
    """Copy bandwidth in GB/s (read + write counted) on a 512 MB buffer."""
    a = torch.empty(n_bytes // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a)) for _ in range(3))
    return 2 * n_bytes / best / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--widths", default="16384,65536,262144,1048576")
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--auxk", action="store_true", help="make every latent dead so AuxK runs each step"
    )
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.one is not None:
        print(json.dumps(one(a.one, a.d_model, a.batch, a.steps, a.k, a.auxk)))
        return
    rows = []
    for w in [int(x) for x in a.widths.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(w),
            "--d-model",
            str(a.d_model),
            "--batch",
            str(a.batch),
            "--k",
            str(a.k),
            "--steps",
            str(a.steps),
            "--threads",
            str(a.threads),
        ] + (["--auxk"] if a.auxk else [])
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)),
        )
        if p.returncode != 0:
            print(f"width {w}: failed ({p.returncode}): {p.stderr[-500:]}", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"width {w:>9,}: step {r['step_s']:7.3f}s (GEMM floor {r['gemm_s']:.3f}s, "
            f"{r['gemm_gflops']:.0f} GFLOP/s), peak RSS {r['peak_rss_gb']:.2f} GB, init "
            f"{r['init_s']:.1f}s",
            flush=True,
        )
    peak = peak_gemm()
    bw = mem_bandwidth()
    # Fit t_step = a * gemm_s + c * width (least squares over the widths measured).
    fit = None
    if len(rows) >= 2:
        import numpy as np

        A = np.array([[r["gemm_s"], r["width"]] for r in rows])
        y = np.array([r["step_s"] for r in rows])
        (ga, c), *_ = np.linalg.lstsq(A, y, rcond=None)
        fit = {"gemm_multiplier": float(ga), "seconds_per_latent": float(c)}
    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": a.threads,
            "peak_gemm_gflops": peak,
            "copy_gbps": bw,
            "torch": torch.__version__,
        },
        "rows": rows,
        "fit": fit,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"peak fp32 GEMM {peak:.0f} GFLOP/s, copy {bw:.1f} GB/s; fit {fit}; -> {a.out}")


if __name__ == "__main__":
    main()

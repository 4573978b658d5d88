"""Capture throughput on the default model, side by side in one run.

Compares on the same token batches (medians over interleaved repeats):
  full      the model's full forward with logits (what a naive capture does)
  bare      a bare truncated forward: the base model cut to layers 0..L, no LM head
  capture   lmscope's capture of blocks.L.resid_post (hooks + early stop)
for fp32 and bf16 weights. Targets (issue 2): capture >= 1.6x full; capture <= 5% over bare.

    .venv/bin/python bench/bench_capture.py [--layer 15] [--batch 8] [--ctx 128] [--repeats 7]
Writes bench/results/capture.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lmscope.models import load_model
from lmscope.models.runtime import run


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(args, dtype: str) -> dict:
    """Median tok/s of full / bare truncated / capture on the same batches, interleaved."""
    lm = load_model(args.model, dtype=dtype)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    toks = torch.randint(100, vocab, (args.batch, args.ctx))
    hook = f"blocks.{args.layer}.resid_post"
    base = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else lm.model.model
    layers, n = base.layers, lm.model.config.num_hidden_layers

    def full():
        with torch.inference_mode():
            lm.model(toks, use_cache=False)

    def bare():
        base.layers = torch.nn.ModuleList(list(layers)[: args.layer + 1])
        lm.model.config.num_hidden_layers = args.layer + 1
        try:
            with torch.inference_mode():
                base(toks, use_cache=False)
        finally:
            base.layers, lm.model.config.num_hidden_layers = layers, n

    def cap():
        run(lm, toks, capture=[hook])

    times = {"full": [], "bare": [], "capture": []}
    fns = {"full": full, "bare": bare, "capture": cap}
    for f in fns.values():
        f()
    for _ in range(args.repeats):  # interleave so machine noise hits all three alike
        for name, f in fns.items():
            times[name] += timed(f, 1)
    ntok = args.batch * args.ctx
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "dtype": dtype,
        **{f"{k}_tok_s": ntok / v for k, v in med.items()},
        "capture_vs_full": med["full"] / med["capture"],
        "capture_overhead_vs_bare": med["capture"] / med["bare"] - 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "args": vars(args),
        "rows": [],
    }
    for dtype in ("float32", "bfloat16"):
        row = measure(args, dtype)
        results["rows"].append(row)
        print(
            f"{dtype:>9}: full {row['full_tok_s']:7.0f} tok/s | bare truncated "
            f"{row['bare_tok_s']:7.0f} | "
            f"capture {row['capture_tok_s']:7.0f} | capture/full {row['capture_vs_full']:.2f}x | "
            f"overhead vs bare {100 * row['capture_overhead_vs_bare']:+.1f}%",
            flush=True,
        )
    f32, b16 = results["rows"]
    results["bf16_vs_fp32_capture"] = b16["capture_tok_s"] / f32["capture_tok_s"]
    print(f"bf16 / fp32 capture speed: {results['bf16_vs_fp32_capture']:.2f}x")
    out = Path(__file__).parent / "results" / "capture.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

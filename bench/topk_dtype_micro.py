"""Top-k selection of bf16 pre-activations: directly vs on a float32 copy (issue 20's step item).

One thread, process CPU time, median of 7 interleaved repeats; checks both select the same values.

    python bench/topk_dtype_micro.py 1024 2304     # the whole-model transcoder step's shape
    python bench/topk_dtype_micro.py 4096 4608     # the sae shape of bench_train_step.py
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    torch.set_num_threads(1)
    batch, d_sae, k = int(sys.argv[1]), int(sys.argv[2]), 32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 576, generator=g).bfloat16()
    W = (torch.randn(576, d_sae, generator=g) / 24).bfloat16()
    pre = x @ W  # bf16 pre-activations, ties included, as the bf16 step makes them
    ways = {
        "bf16": lambda: pre.topk(k, dim=-1, sorted=False),
        "float32 copy": lambda: pre.float().topk(k, dim=-1, sorted=False),
    }
    a, b = ways["bf16"](), ways["float32 copy"]()
    same = torch.equal(a[0].float().sort(-1).values, b[0].sort(-1).values)
    print(f"[{batch}, {d_sae}] k {k}: same selected values: {same}")
    t: dict[str, list[float]] = {n: [] for n in ways}
    for _ in range(7):
        for n, f in ways.items():
            c = time.process_time()
            f()
            t[n].append(time.process_time() - c)
    for n, v in t.items():
        print(f"  {n}: median {statistics.median(v) * 1e3:.1f} ms (7 repeats)")


if __name__ == "__main__":
    main()

"""Cross-layer transcoder training cost: parameters, peak memory, step time and tokens/s by width.

For each latent count n per layer (--widths), a fresh subprocess builds a CLT of SmolLM2-135M's
shape (--layers 30, d_model 576) and runs the trainer's own step (clt_trainer._step: loss,
backward, parallel-gradient removal, fused Adam over every parameter, decoder renormalization)
on --steps batches of synthetic activations [L, batch, 576]. The step's cost does not depend on
the values (TopK keeps k latents per layer and token whatever they are), so Gaussian inputs and
targets with per-layer scales time the same work as the model's activations; what they do not
reproduce is which latents fire, which matters only for the "decoder rows touched" column
(latents of a layer active on at least one token of the batch, at initialization).

Reported per width: total and decoder parameters (the formula L(L+1)/2 * n * d for the
decoders), the float32 training state 16 bytes/parameter, the process's peak RSS (ru_maxrss
of the child, model-free: the LM's ~0.5 GB comes on top in a streaming run), the median step
time over the timed steps (the first is warm-up and dropped) and batch / median = tokens/s.

    .venv/bin/python bench/bench_clt.py --widths 288,576,1152 --batch 1024 --steps 4
Writes bench/results/clt-<timestamp>.json and prints a table. The machine is shared: report
medians and repeat.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(layers: int, d: int, n: int, k: int, batch: int, steps: int, arch: str) -> dict:
    import torch

    from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder
    from lmscope.dictionaries.clt_trainer import _CLTSlot, _step
    from lmscope.dictionaries.trainer import make_optimizer

    torch.manual_seed(0)
    cfg = CLTConfig(n_layers=layers, d_model=d, d_sae=n, arch=arch, k=k)
    clt = CrossLayerTranscoder(cfg)
    scales = torch.logspace(-1, 2, layers)[:, None, None]  # layers of very different norms
    x = torch.randn(layers, batch, d) * scales
    t = torch.randn(layers, batch, d) * scales.flip(0)
    clt.init_from_data(x, t)
    slot = _CLTSlot(
        clt, make_optimizer(list(clt.parameters())), torch.zeros(layers, n, dtype=torch.long)
    )

    class Plan:  # the two fields _step reads
        dead_tokens = 10**9
        batch_size = batch

    times, touched = [], []
    for i in range(steps + 1):
        xb = torch.randn(layers, batch, d) * scales
        tb = torch.randn(layers, batch, d) * scales.flip(0)
        t0 = time.perf_counter()
        _step(slot, xb, tb, 1e-4, Plan, False, False)
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
        touched.append(float((slot.since_fired == 0).float().mean()))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    med = statistics.median(times)
    return {
        "layers": layers,
        "d_model": d,
        "n": n,
        "k": k,
        "arch": arch,
        "batch": batch,
        "params": cfg.n_params,
        "decoder_params": cfg.n_decoder_params,
        "train_state_gib": 16 * cfg.n_params / 2**30,
        "peak_rss_gib": peak_kb / 2**20,
        "step_s_median": med,
        "step_s_all": times,
        "tokens_per_s": batch / med,
        "decoder_rows_touched": statistics.median(touched),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--widths", default="288,576,1152")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--arch", default="topk", choices=["topk", "jumprelu"])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.layers, a.d_model, a.child, a.k, a.batch, a.steps, a.arch)))
        return
    rows = []
    for n in [int(w) for w in a.widths.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(n), "--layers", str(a.layers)]
        cmd += ["--d-model", str(a.d_model), "--k", str(a.k), "--batch", str(a.batch)]
        cmd += ["--steps", str(a.steps), "--arch", a.arch]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"L={r['layers']} n={r['n']:>5} {r['arch']}: params {r['params'] / 1e6:7.1f}M "
            f"(decoders {r['decoder_params'] / 1e6:7.1f}M)  state {r['train_state_gib']:5.2f} GiB  "
            f"peak RSS {r['peak_rss_gib']:5.2f} GiB  step {r['step_s_median']:6.2f} s  "
            f"{r['tokens_per_s']:7.0f} tok/s  rows touched {r['decoder_rows_touched']:.0%}",
            flush=True,
        )
    res = REPO / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    path = res / f"clt-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

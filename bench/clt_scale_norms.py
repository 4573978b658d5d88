"""How heavy-tailed each layer's MLP input and output norms are on SmolLM2, and how stable a
per-layer normalization scale is when set from one batch: the mean squared token norm (the old
CLT rule, base.py's) against the median (clt.median_scale, the rule since issue 16's fix).

Streams --batches batches of --batch-size training tokens (the default corpus's train split,
seed 0: the tokens `lmscope train --clt` starts with; BOS and separators excluded as in
training) and writes, per hook: median, mean and max of ||x||^2 over all tokens, and the range
over batches of each batch's mean and median, each divided by the all-token value.

    python bench/clt_scale_norms.py > bench/results/clt_scale_norms.json
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    a = ap.parse_args()
    from lmscope.dictionaries.sources import StreamSource
    from lmscope.models import load_model

    torch.set_num_threads(1)
    lm = load_model(a.model)
    hooks = [f"blocks.{i}.mlp_{w}" for i in range(lm.n_layers) for w in ("in", "out")]
    src = StreamSource(
        lm, hooks, corpus="default", ctx_len=128, batch_size=a.batch_size, buffer_mb=256, seed=0
    )
    it = src.batches()
    sq: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for _ in range(a.batches):
        b = next(it)
        for h in hooks:
            sq[h].append(b[h].float().pow(2).sum(-1))  # [batch] squared norms
    out = {}
    for h in hooks:
        v = torch.cat(sq[h])
        mean, med = float(v.mean()), float(v.median())
        bmeans = [float(s.mean()) / mean for s in sq[h]]
        bmeds = [float(s.median()) / med for s in sq[h]]
        out[h] = {
            "median_sq_norm": round(med, 3),
            "mean_over_median": round(mean / med, 3),
            "max_over_median": round(float(v.max()) / med, 1),
            "max_share_of_sum": round(float(v.max() / v.sum()), 4),
            "first_batch_mean_over_mean": round(bmeans[0], 3),
            "batch_mean_over_mean": [round(min(bmeans), 3), round(max(bmeans), 3)],
            "batch_median_over_median": [round(min(bmeds), 3), round(max(bmeds), 3)],
        }
    print(
        json.dumps(
            {
                "model": a.model,
                "tokens": int(torch.cat(sq[hooks[0]]).numel()),
                "batch_size": a.batch_size,
                "hooks": out,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

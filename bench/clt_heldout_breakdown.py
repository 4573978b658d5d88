"""Held-out FVU of a trained CLT by target layer, with and without each layer's 1% highest-norm
tokens, and each layer's share of the summed per-layer-normalized squared error.

One batch of --tokens held-out tokens (the corpus's test split: documents the training stream,
which reads the train split, never saw), all layers from the same model pass. The normalization
scale of each layer is recomputed on this batch (mean squared target norm = d_model), as
training set it on its first batch before issue 16's fix (training now uses the median token,
clt.median_scale); the saved CLT has its training scales folded in.

    python bench/clt_heldout_breakdown.py /work/scratch/clt/run288/dictionaries/clt \\
        > bench/results/clt_heldout_breakdown.json
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clt")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=1024)
    a = ap.parse_args()
    from lmscope.dictionaries.clt import CrossLayerTranscoder
    from lmscope.dictionaries.sources import StreamSource
    from lmscope.models import load_model

    lm = load_model(a.model)
    clt = CrossLayerTranscoder.load(a.clt)
    L, d = clt.n_layers, clt.d_model
    hooks = [h for i in range(L) for h in (f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")]
    src = StreamSource(
        lm,
        hooks,
        corpus="default",
        ctx_len=128,
        batch_size=a.tokens,
        buffer_mb=160,
        split="test",
        seed=1,
    )
    b = next(src.batches())
    x = torch.stack([b[f"blocks.{i}.mlp_in"].float() for i in range(L)])  # [L, B, d]
    t = torch.stack([b[f"blocks.{i}.mlp_out"].float() for i in range(L)])
    with torch.no_grad():
        rec = clt(x)
    err = (rec - t).pow(2).sum(-1)  # [L, B]
    var = (t - t.mean(1, keepdim=True)).pow(2).sum(-1)  # [L, B]
    norms = t.norm(dim=-1)  # [L, B]
    keep = norms <= norms.quantile(0.99, dim=1, keepdim=True)
    mean_kept = (t * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None]
    var_kept = ((t - mean_kept).pow(2).sum(-1) * keep).sum(1)
    s2 = d / t.pow(2).sum(-1).mean(1)  # per-layer normalization, squared
    nerr = err.sum(1) * s2 / x.shape[1]  # [L] normalized squared error per token
    out = {
        "clt": a.clt,
        "tokens": x.shape[1],
        "fvu": [round(float(v), 3) for v in err.sum(1) / var.sum(1)],
        "fvu_without_top1pct_norm": [round(float(v), 3) for v in (err * keep).sum(1) / var_kept],
        "normalized_mse_per_token_sum": round(float(nerr.sum()), 1),
        "share_of_normalized_mse": [round(float(v), 3) for v in nerr / nerr.sum()],
        "max_norm_over_median": [round(float(n.max() / n.median()), 1) for n in norms],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Why `lmscope train` and `lmscope eval` print different FVUs for one dictionary (issue 14).

    .venv/bin/python bench/bench_fvu_definitions.py --atlas runs/smollm2-135m/atlas --tokens 10000

Takes the dictionary's final weights and N text tokens (BOS and special tokens excluded) of each
split of the default corpus: the training split (the first tokens the dictionary was streamed) and
the held-out split (what `lmscope eval` reads). On each it computes FVU four ways:

- pooled (eval's definition): sum ||x - x_hat||^2 / sum ||x - mean||^2 over the whole set;
- pooled without the norm outliers (||x|| > OUTLIER_FACTOR x median norm, evaluate.py);
- per-batch mean (the trainer's logged definition): the mean over batches of 1,024 shuffled
  tokens of each batch's FVU, each batch centred on its own mean;
- per-batch mean without the outliers.

Writes bench/results/fvu_definitions-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmscope.dictionaries import load_dictionary
from lmscope.dictionaries.evaluate import OUTLIER_FACTOR, heldout_contexts
from lmscope.models import load_model
from lmscope.models.runtime import run
from lmscope.models.tokens import token_mask


def fvus(x: torch.Tensor, r: torch.Tensor, batch: int, seed: int = 0) -> dict:
    """x, r: [tokens, d] float64 activations and reconstructions."""
    err = (r - x).pow(2).sum(-1)  # [tokens]
    norm = x.norm(dim=-1)
    inl = norm <= OUTLIER_FACTOR * norm.median()

    def pooled(m):
        return float(err[m].sum() / (x[m] - x[m].mean(0)).pow(2).sum())

    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))

    def per_batch(m):
        idx = perm[m[perm]]
        vals = []
        for s in range(0, idx.numel() - batch + 1, batch):
            b = idx[s : s + batch]
            vals.append(float(err[b].sum() / (x[b] - x[b].mean(0)).pow(2).sum()))
        return {
            "mean": sum(vals) / len(vals),
            "min": min(vals),
            "max": max(vals),
            "batches": len(vals),
        }

    every = torch.ones_like(inl)
    var = (x - x.mean(0)).pow(2).sum()
    return {
        "tokens": int(x.shape[0]),
        "outliers": int((~inl).sum()),
        "outlier_var_share": float((x[~inl] - x.mean(0)).pow(2).sum() / var),
        "pooled": pooled(every),
        "pooled_no_outliers": pooled(inl),
        "per_batch": per_batch(every),
        "per_batch_no_outliers": per_batch(inl),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atlas", default="runs/smollm2-135m/atlas")
    ap.add_argument("--hook", default="blocks.15.resid_post")
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1024, help="the trainer's batch size")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    man = json.loads((Path(args.atlas) / "atlas.json").read_text())
    entry = man["dictionaries"][args.hook]
    lm = load_model(man["model"])
    sae = load_dictionary(Path(args.atlas) / entry["path"]).eval()
    out = {
        "atlas": args.atlas,
        "hook": args.hook,
        "train_fvu_reported": entry.get("train_fvu"),
        "outlier_factor": OUTLIER_FACTOR,
        "splits": {},
    }
    for split in ("train", "test"):
        ctxs = heldout_contexts(lm, "default", tokens=args.tokens, ctx_len=128, split=split)
        xs, rs = [], []
        with torch.no_grad():
            for i in range(0, len(ctxs), 8):
                t = torch.stack(ctxs[i : i + 8])  # [b, 128]
                x = (
                    run(lm, t, capture=[args.hook]).acts[args.hook].float()[token_mask(lm, t)]
                )  # [tokens, d]
                xs.append(x.double())
                rs.append(sae(x).double())
        out["splits"][split] = fvus(torch.cat(xs), torch.cat(rs), args.batch)
        print(split, json.dumps(out["splits"][split]), flush=True)
    path = (
        Path("bench/results")
        / f"fvu_definitions-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    )
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

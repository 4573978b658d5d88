"""Time probe training over every layer of the default model on the built-in sets (2 CPU threads).

    .venv/bin/python bench/bench_probe.py                      # cities,neg_cities,larger_than,smaller_than
    .venv/bin/python bench/bench_probe.py --dataset all --kinds logistic,massmean,ccs

Reports: seconds to read activations (one forward per batch captures all 30
resid_post hooks), seconds to fit every probe type at every layer, and the
held-out accuracy per layer.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="cities,neg_cities,larger_than,smaller_than")
    ap.add_argument("--kinds", default="logistic,massmean,ccs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lmscope.models.load import load_model
    from lmscope.probe.datasets import load_dataset, parse_names
    from lmscope.probe.probes import fit
    from lmscope.probe.sweep import read_split

    t0 = time.perf_counter()
    lm = load_model(args.model)
    t_load = time.perf_counter() - t0
    datasets = [load_dataset(n) for n in parse_names(args.dataset)]
    kinds = args.kinds.split(",")
    hooks = lm.hooks.resolve("blocks.*.resid_post")
    t0 = time.perf_counter()
    tr = read_split(lm, datasets, "train", hooks, contrast="ccs" in kinds)
    te = read_split(lm, datasets, "test", hooks, contrast=False)
    t_acts = time.perf_counter() - t0
    n_texts = len(tr.y) * (2 if "ccs" in kinds else 1) + len(te.y)
    t_fit = {k: 0.0 for k in kinds}
    acc = {k: [] for k in kinds}
    for h in hooks:
        for k in kinds:
            t1 = time.perf_counter()
            p = fit(k, h, tr.x[h], tr.y, tr.contrast.get(h))
            t_fit[k] += time.perf_counter() - t1
            acc[k].append(p.accuracy(te.x[h], te.y))
    total = t_acts + sum(t_fit.values())
    print(f"model {lm.name} ({lm.n_layers} layers, d_model {lm.d_model}), {args.threads} threads, "
          f"sets {args.dataset}: {len(tr.y)} train / {len(te.y)} test statements")
    print(f"load {t_load:.1f}s; activations {t_acts:.1f}s ({n_texts} statements x {len(hooks)} layers); "
          + "; ".join(f"fit {k} {t:.1f}s" for k, t in t_fit.items()) + f"; total (excl. load) {total:.1f}s")
    print("layer " + "".join(f"{k:>10}" for k in kinds))
    for i in range(len(hooks)):
        print(f"{i:>5} " + "".join(f"{acc[k][i]:>10.3f}" for k in kinds))


if __name__ == "__main__":
    main()

"""Time probe training over every layer of the default model on the built-in sets (2 CPU threads).

    .venv/bin/python bench/bench_probe.py                      #
    cities,neg_cities,larger_than,smaller_than
    .venv/bin/python bench/bench_probe.py --dataset all --kinds logistic,massmean,ccs
    .venv/bin/python bench/bench_probe.py --lies 32          # answer generation: batched vs one at
    a time

Reports: seconds to read activations (one forward per batch captures all 30
resid_post hooks), seconds to fit every probe type at every layer, and the
validation accuracy per layer (the test split is for `lmscope probe train`'s one
chosen probe, never a per-layer curve). With --lies N: seconds to generate the honest
answers of `probe lies` for N cities in batches of 16 (left-padded) and one
prompt at a time, and whether both give the same answers.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    from lmscope.models.registry import DEFAULT_MODEL

    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dataset", default="cities,neg_cities,larger_than,smaller_than")
    ap.add_argument("--kinds", default="logistic,massmean,ccs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--lies", type=int, default=0, help="time answer generation for N cities instead"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.lies:
        return bench_answers(args)

    from lmscope.models.load import load_model
    from lmscope.probe.datasets import load_dataset, parse_names
    from lmscope.probe.registry import fit
    from lmscope.probe.sweep import read_split

    t0 = time.perf_counter()
    lm = load_model(args.model)
    t_load = time.perf_counter() - t0
    datasets = [load_dataset(n) for n in parse_names(args.dataset)]
    kinds = args.kinds.split(",")
    hooks = lm.hooks.resolve("blocks.*.resid_post")
    t0 = time.perf_counter()
    tr = read_split(lm, datasets, "train", hooks, contrast="ccs" in kinds)
    te = read_split(lm, datasets, "val", hooks, contrast=False)
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
    print(
        f"model {lm.name} ({lm.n_layers} layers, d_model {lm.d_model}), {args.threads} threads, "
        f"sets {args.dataset}: {len(tr.y)} train / {len(te.y)} validation statements"
    )
    print(
        f"load {t_load:.1f}s; activations {t_acts:.1f}s ({n_texts} statements x {len(hooks)} "
        "layers); "
        + "; ".join(f"fit {k} {t:.1f}s" for k, t in t_fit.items())
        + f"; total (excl. load) {total:.1f}s"
    )
    print("validation accuracy\nlayer " + "".join(f"{k:>10}" for k in kinds))
    for i in range(len(hooks)):
        print(f"{i:>5} " + "".join(f"{acc[k][i]:>10.3f}" for k in kinds))


def bench_answers(args) -> None:
    from lmscope.models.load import load_model
    from lmscope.probe.answers import generate_answers
    from lmscope.probe.facts import CITIES
    from lmscope.probe.lies import prompt_ids

    lm = load_model(args.model)
    prompts = [prompt_ids(lm, c, "honest") for c in sorted(CITIES)[: args.lies]]
    times, texts = {}, {}
    for bs in (16, 1):
        t0 = time.perf_counter()
        answers = generate_answers(lm, prompts, max_new_tokens=20, batch_size=bs)
        times[bs] = time.perf_counter() - t0
        texts[bs] = [a.text for a in answers]
    n_tok = sum(len(a.generated) for a in answers)
    print(
        f"model {lm.name}, {args.threads} threads: {len(prompts)} answers ({n_tok} generated "
        "tokens, <= 20 each); "
        f"batch 16 {times[16]:.1f}s, one at a time {times[1]:.1f}s ({times[1] / times[16]:.1f}x); "
        f"same answers: {texts[16] == texts[1]}"
    )


if __name__ == "__main__":
    main()

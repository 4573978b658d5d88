"""The whole-model scan: a 20-token prompt through every layer's dictionary (issue 20 Must 3).

On an atlas with one skip transcoder per layer (30 for SmolLM2-135M), times:
  open        Reader.open (model, 30 dictionaries, atlas DB)
  scan        Reader.scan: one forward capturing every mlp_in and mlp_out, 30 encodes, the
              per-layer fit (1 - FVU), top-k, labels (bulk: one query per dictionary)
  encode      Reader.encode_full alone (forward + encode + fit), the part without labels
  labels      the label lookup of one scan's features: bulk (AtlasDB.labels, one query per
              dictionary) against one query per feature (AtlasDB.label, what scan did before)
  compare     compare(A, B): two encodes, the feature ranking and the diff map
with 1 and 2 torch threads (medians of --repeats).

    .venv/bin/python bench/bench_scan_layers.py ATLAS [--repeats 5] [--tokens 20]
Writes bench/results/scan_layers.json.
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

TEXT = (
    "The horse galloped across the wide green field while the farmer watched from the old wooden "
    "gate, and the clouds gathered over the hills beyond the quiet river and the town"
)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlas")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20, help="prompt length, BOS included")
    ap.add_argument("--out", default="bench/results/scan_layers.json")
    a = ap.parse_args()
    from lmscope.read import Reader, compare

    torch.set_num_threads(1)
    t = time.perf_counter()
    reader = Reader.open(a.atlas)
    t_open = time.perf_counter() - t
    # A prompt of exactly --tokens tokens (BOS included), and B = the same with one word changed.
    ids = reader.lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"][: a.tokens - 1]
    PROMPT = reader.lm.tokenizer.decode(ids)
    PROMPT_B = PROMPT.replace("watched", "shouted")
    n_tokens = reader.tokenize(PROMPT).shape[1]
    res = reader.scan(PROMPT)  # warm-up
    wanted: dict[str, set[int]] = {}
    for hook in res.hooks:
        wanted[hook] = {h.feature for row in res.top[hook] for h in row}
    n_feats = sum(len(v) for v in wanted.values())
    out = {
        "atlas": str(a.atlas),
        "dictionaries": len(reader.hooks),
        "prompt_tokens": n_tokens,
        "prompt": PROMPT,
        "prompt_b": PROMPT_B,
        "distinct_features_shown": n_feats,
        "open_s": t_open,
        "load_avg_before": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": a.repeats,
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"scan_s_{threads}t"] = timed(lambda: reader.scan(PROMPT), a.repeats)
        out[f"encode_s_{threads}t"] = timed(lambda: reader.encode_full(PROMPT), a.repeats)
        out[f"compare_s_{threads}t"] = timed(lambda: compare(reader, PROMPT, PROMPT_B), a.repeats)
    torch.set_num_threads(1)
    db = reader.db
    if db is not None:
        out["labels_bulk_s"] = timed(lambda: reader.labels_for(wanted), a.repeats)
        out["labels_one_by_one_s"] = timed(
            lambda: [db.label(h, i) for h, idxs in wanted.items() for i in idxs], a.repeats
        )
    out["load_avg_after"] = os.getloadavg()
    out["medians"] = {
        k: statistics.median(v)
        for k, v in out.items()
        if isinstance(v, list) and v and all(isinstance(x, float) for x in v)
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("dictionaries", "prompt_tokens", "open_s")}))
    for k, v in out["medians"].items():
        print(f"{k:>24} median {v:.3f} s")
    print(f"load average before {out['load_avg_before']}, after {out['load_avg_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pair margins with the prompt's KV cache shared by bad and good (correct/measure.pair_margins)
against two full re-runs of prompt + continuation (the reference, continuation_logprobs twice).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_pair_margins.py   # float32, 1 thread

Prints CPU and wall seconds of each (2 repeats) on the first 24 premise pairs of
examples/bugs/premise.jsonl (chat template) and the largest margin difference.
"""

from __future__ import annotations

import json
import time

import torch

from lmscope.correct.bugs import load_bugs
from lmscope.correct.measure import (
    _continuation_ids,
    continuation_logprobs,
    pair_margins,
    prompt_ids,
)
from lmscope.models import load_model


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")  # float32
    cases = load_bugs("examples/bugs/premise.jsonl").cases[:24]
    prompts = [prompt_ids(lm, c) for c in cases]

    def full():
        bad = continuation_logprobs(lm, prompts, [_continuation_ids(lm, c.bad) for c in cases])
        good = continuation_logprobs(lm, prompts, [_continuation_ids(lm, c.good) for c in cases])
        return bad - good

    out: dict = {"n_pairs": len(cases), "prompt_tokens_mean": sum(map(len, prompts)) / len(cases)}
    margins = {}
    for name, f in (("full_reruns", full), ("shared_cache", lambda: pair_margins(lm, cases))) * 2:
        t, w = time.process_time(), time.time()
        margins[name] = f()
        out.setdefault(name, []).append(
            {"cpu_s": time.process_time() - t, "wall_s": time.time() - w}
        )
    out["max_abs_diff_nats"] = float((margins["full_reruns"] - margins["shared_cache"]).abs().max())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Peak memory of the atlas's logit effects on a Gemma-3-sized vocabulary: the feature chunk sized
from a byte budget (lmscope/atlas/logits.py) against the fixed 4,096 rows it replaced.

    PYTHONPATH=. python bench/bench_logit_memory.py budget   # then: ... 4096
    (one process per setting: ru_maxrss is a per-process peak)

A float32 unembedding of 262,144 x 640 (Gemma 3 270M's shape, random, seed 0) and 2,304 decoder
rows (the default run's dictionary width); prints the RSS added by logit_effects, wall and CPU
seconds (one torch thread), and the first feature's top token ids (the same in both settings).
"""

from __future__ import annotations

import resource
import sys
import time
from types import SimpleNamespace

import torch

from lmscope.atlas import logits as Lg


def main(setting: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(262_144, 640)
    with torch.no_grad():
        emb.weight.normal_(generator=g)
    model = SimpleNamespace(get_output_embeddings=lambda: emb)
    lm = SimpleNamespace(model=model, hooks=SimpleNamespace())
    W_dec = torch.randn(2304, 640, generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    chunk = None if setting == "budget" else int(setting)
    eff = Lg.logit_effects(lm, W_dec, k=10, chunk=chunk)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = chunk or Lg.logit_chunk(262_144)
    print(
        f"chunk={setting} rows/chunk={rows} rss_before={base:.0f}MB peak={peak:.0f}MB "
        f"added={peak - base:.0f}MB wall={wall:.1f}s cpu={cpu:.1f}s "
        f"ids0={eff.promoted_ids[0, :3].tolist()}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "budget")

"""Where lmscope's whole-model training time goes: cProfile with a CPU clock, one thread, on the
token windows of a `bench_train_all.py vs-sparsify` run (its spec.json).

    PYTHONPATH=. python bench/profile_train_all.py /tmp/bench_train_vs_sparsify/spec.json 8192
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_all as B  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    spec = {**spec, "tokens": int(sys.argv[2]), "lmscope_out": "/tmp/profile_train_all"}
    pr = cProfile.Profile(time.process_time)
    pr.enable()
    r = B._worker_lmscope(None, spec)
    pr.disable()
    print({k: v for k, v in r.items() if k != "dictionaries"})
    pats = r"(trainer|sources|topk|kernels|base|runtime|init|save|optim)"
    pstats.Stats(pr).sort_stats("cumulative").print_stats(pats, 45)


if __name__ == "__main__":
    main()

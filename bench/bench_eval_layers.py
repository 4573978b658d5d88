"""Wall time of `lmscope eval` on a whole-model atlas (30 skip transcoders of SmolLM2-135M).

    .venv/bin/python bench/bench_eval_layers.py ATLAS --tokens 4096 --splice-tokens 1024
    .venv/bin/python bench/bench_eval_layers.py ATLAS ... --full-forward   # the old route

Runs evaluate_atlas as `lmscope eval ATLAS --model-dtype auto --no-baselines` does (model load
timed apart), and, as a yardstick for a shared machine, the time of plain forward passes (with
the LM head) over the same number of spliced-loss tokens: `eval / forward` is the cost of the
eval in units of "one clean forward over the spliced tokens", less sensitive to the machine's
load than seconds; process CPU seconds are recorded too (on a machine shared by many jobs, the
CPU time a job needs says more about a dedicated 2-core run than its wall time). Writes
bench/results/eval_layers_<tag>.json; prints the one-table report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("atlas")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--splice-tokens", type=int, default=1024)
    ap.add_argument("--model-dtype", default="auto")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--full-forward", action="store_true", help="splice with full forwards")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    from lmscope.dictionaries import evaluate as ev
    from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas, format_report
    from lmscope.models import load_model

    # Work on a copy: eval writes eval.json and plots/ into the atlas.
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    atlas = tmp / "atlas"
    shutil.copytree(a.atlas, atlas, ignore=shutil.ignore_patterns("train", "plots", "eval.json"))
    cfg = EvalConfig(
        atlas=str(atlas),
        tokens=a.tokens,
        splice_tokens=a.splice_tokens,
        model_dtype=a.model_dtype,
        baselines=False,
        batch=a.batch,
    )
    load0 = os.getloadavg()
    t = time.perf_counter()
    lm = load_model("smollm2-135m", dtype=ev.model_dtype(cfg))
    t_load = time.perf_counter() - t
    if a.full_forward:  # the reference route: every splice a full forward with an edit
        orig = ev.evaluate_dictionaries

        def full(*args, **kw):
            return orig(*args, **kw, resume=False)

        ev.evaluate_dictionaries = full
    t, c = time.perf_counter(), time.process_time()
    rep = evaluate_atlas(cfg, lm=lm, progress=False)
    t_eval, c_eval = time.perf_counter() - t, time.process_time() - c
    # Yardstick: plain forwards with logits over as many contexts as the spliced loss used.
    n_ctx = rep.dictionaries[0].loss_contexts
    toks = torch.randint(100, 40000, (a.batch, 128), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t, c = time.perf_counter(), time.process_time()
        for _ in range(max(1, n_ctx // a.batch)):
            lm.model(toks, use_cache=False)
        t_fwd, c_fwd = time.perf_counter() - t, time.process_time() - c
    load1 = os.getloadavg()
    print(format_report(rep))
    out = {
        "atlas": a.atlas,
        "dictionaries": len(rep.dictionaries),
        "tokens": rep.tokens,
        "loss_contexts": n_ctx,
        "model_dtype": rep.model_dtype,
        "route": "full-forward" if a.full_forward else "resume",
        "seconds_model_load": t_load,
        "seconds_eval": t_eval,
        "seconds_forward_over_splice_tokens": t_fwd,
        "eval_over_forward": t_eval / t_fwd,
        "cpu_seconds_eval": c_eval,
        "cpu_seconds_forward": c_fwd,
        "cpu_eval_over_forward": c_eval / c_fwd,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "cpus": os.cpu_count(),
        "rows": [
            {
                k: getattr(e, k)
                for k in ("hook", "fvu", "fvu_ci", "fvu_inliers", "l0", "dead_frac", "ce_added")
                + ("ce_added_ci", "kl", "kl_ci", "ce_clean")
            }
            for e in rep.dictionaries
        ],
    }
    res = Path(__file__).resolve().parent / "results"
    res.mkdir(exist_ok=True)
    tag = a.tag or f"{rep.model_dtype}_{out['route']}_{a.tokens}_{a.splice_tokens}"
    (res / f"eval_layers_{tag}.json").write_text(json.dumps(out, indent=1))
    print(
        f"\neval {t_eval:.0f} s (model load {t_load:.0f} s), forward yardstick {t_fwd:.1f} s, "
        f"ratio {t_eval / t_fwd:.1f}; CPU time eval {c_eval:.0f} s, forward {c_fwd:.1f} s "
        f"(ratio {c_eval / c_fwd:.1f}); peak RSS {out['peak_rss_gb']:.2f} GB; load average "
        f"{load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

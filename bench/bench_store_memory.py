"""Peak memory of `lmscope capture` vs the token count: bounded by the batch and one shard, not the
corpus.

Each capture runs in its own process (`lmscope capture ... --json`); its peak resident set
(ru_maxrss
of the child) is read after it exits. If memory were O(tokens), the peak would grow with --tokens;
it should stay flat. Default: the real SmolLM2 (blocks.6.resid_post, bf16 weights, 16 MB shards) at
25k / 100k / 250k / 1M tokens of the default corpus; --model tiny uses a tiny llama built in code.

    .venv/bin/python bench/bench_store_memory.py [--tokens 25k,100k,250k,1M] [--model smollm2-135m]
Writes bench/results/store_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The child reports its own peak RSS (ru_maxrss of RUSAGE_SELF, KiB) as its last stderr line.
WRAP = (
    "import sys, resource; from lmscope.cli import main; rc = main(sys.argv[1:]); "
    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="smollm2-135m", help="a model, or 'tiny' (llama built in code)"
    )
    ap.add_argument("--hooks", default="blocks.6.resid_post")
    ap.add_argument("--tokens", default="25k,100k,250k,1M")
    ap.add_argument("--shard-mb", default="16")
    ap.add_argument("--batch-size", default="16")
    ap.add_argument("--model-dtype", default="bfloat16")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmscope-mem-"))
    model = args.model
    if model == "tiny":
        from lmscope.models.tiny import tiny_model

        lm = tiny_model("llama", n_layers=4)
        lm.model.save_pretrained(work / "tiny")
        lm.tokenizer.save_pretrained(work / "tiny")
        model = str(work / "tiny")
        if args.hooks == "blocks.6.resid_post":
            args.hooks = "blocks.2.resid_post"
    rows = []
    for t in args.tokens.split(","):
        out = work / f"store-{t}"
        cmd = [
            sys.executable,
            "-c",
            WRAP,
            "capture",
            "--model",
            model,
            "--hooks",
            args.hooks,
            "--tokens",
            t,
            "--out",
            str(out),
            "--shard-mb",
            args.shard_mb,
            "--batch-size",
            args.batch_size,
            "--model-dtype",
            args.model_dtype,
            "--no-progress",
            "--json",
        ]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"capture failed: {p.stderr.strip().splitlines()[-1]}")
        peak = int(p.stderr.strip().splitlines()[-1].split()[1])  # KiB: the child's own ru_maxrss
        res = json.loads(p.stdout)
        row = {
            "tokens": res["tokens"],
            "store_mib": res["bytes"] / 2**20,
            "peak_rss_mib": peak / 1024,
            "tokens_per_s": res["tokens_per_s"],
            "wall_s": wall,
        }
        rows.append(row)
        print(
            f"{res['tokens']:>10,} tokens  store {row['store_mib']:>8.1f} MiB  peak RSS "
            f"{row['peak_rss_mib']:>7.0f} MiB"
            f"  {row['tokens_per_s']:,.0f} tok/s",
            flush=True,
        )
        for f in out.glob("shard-*"):
            f.unlink()  # keep the disk free; the manifest stays
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "store_memory.json").write_text(
        json.dumps({"args": vars(args), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
